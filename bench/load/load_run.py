"""`python -m bench --parts load`: start the three services as processes on loopback (or use a running
coordinator on loopback), run bench.load.traffic against them, and write OUT/load/results.{json,md}."""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from bench.load.traffic import LoadConfig, run_load, write

# Small admission limits so that the flood finds the queue's end within a bounded number of requests.
COORDINATOR_LIMITS = ("--max-concurrent", "32", "--max-queued", "32")


def run_load_part(args, command: str) -> Path:
    config = LoadConfig()
    overrides = {"clients": args.load_clients, "n": args.load_n, "seconds_per_level": args.load_seconds}
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    if args.coordinator:
        results = run_load(args.coordinator, config)
    else:
        from common.local_stack import Stack

        logs = Path(tempfile.mkdtemp(prefix="specrej-load-"))
        model_args = ("--model", args.model) if args.model else ()
        with Stack(logs, generator_args=model_args, reward_args=model_args,
                   coordinator_args=COORDINATOR_LIMITS) as stack:
            results = run_load(stack.coordinator.address, config)
        results["service_logs"] = str(logs)
    results["command"] = command
    return write(results, Path(args.out) / "load")
