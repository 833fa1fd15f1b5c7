"""A generator whose vLLM engine dies leaves the fleet: health NOT_SERVING, then the process exits
with an error, so that its orchestrator restarts it, instead of serving only failures."""
import os
import pathlib
import signal
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.local_stack import Service

pytest.importorskip("vllm")


def engine_processes(pid: int) -> list[int]:
    """Descendants of `pid` that are vLLM's engine core."""
    found, pending = [], [pid]
    while pending:
        parent = pending.pop()
        for task in pathlib.Path(f"/proc/{parent}/task").iterdir():
            for child in (task / "children").read_text().split():
                pending.append(int(child))
                if "EngineCor" in pathlib.Path(f"/proc/{child}/comm").read_text():
                    found.append(int(child))
    return found


def test_a_generator_whose_engine_dies_goes_not_serving_and_exits(vllm_model_dir, tmp_path):
    # Watched from a fresh process: the suite's own process, after hundreds of tests, has crashed
    # (SIGSEGV, no Python traceback) while watching a generator die, which took every later test with it.
    watcher = subprocess.run(
        [sys.executable, "-c", "import sys, pathlib; from tests.integration.test_engine_failure import "
         "kill_the_engine_and_watch; kill_the_engine_and_watch(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]))",
         str(vllm_model_dir), str(tmp_path)],
        cwd=pathlib.Path(__file__).parents[2], capture_output=True, text=True, timeout=600)
    assert watcher.returncode == 0, (watcher.returncode, watcher.stdout[-3000:], watcher.stderr[-3000:])


def kill_the_engine_and_watch(vllm_model_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    generator = Service("generator_service", "--backend", "vllm", "--compile", "off", "--model", str(vllm_model_dir),
                        "--kv-cache-budget", "4MiB", log_dir=tmp_path)
    try:
        engines = engine_processes(generator.process.pid)
        assert len(engines) == 1, generator.log()[-2000:]
        os.kill(engines[0], signal.SIGKILL)
        statuses = []
        with grpc.insecure_channel(generator.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 60
            while generator.process.poll() is None and time.monotonic() < deadline:
                try:
                    statuses.append(health.Check(health_pb2.HealthCheckRequest(), timeout=1).status)
                except grpc.RpcError as error:
                    statuses.append(error.code())
                time.sleep(0.2)
        assert generator.process.returncode == 1, generator.log()[-3000:]
        assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses or grpc.StatusCode.UNAVAILABLE in statuses
        assert "engine failed; draining and exiting" in generator.log()
    finally:
        generator.stop()
