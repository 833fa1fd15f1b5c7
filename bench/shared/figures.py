"""Where the benchmarks leave their figures: the small scripts OUT/NAME.json, with the command that
produced them and the machine they ran on; the load and fleet parts a folder with results.json and
results.md; so a README can cite committed numbers."""
import json
import os
import platform
import shlex
import sys
from pathlib import Path


def vector_extensions() -> str:
    """The widest x86 vector instructions this CPU has: what sets a CPU engine's speed from one
    machine to the next (vLLM's CPU kernels and torch's matrix products alike)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return next((name for name in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if name in flags), "none")


def write_figures(module: str, figures: dict, out_dir: str, command: str | None = None) -> Path:
    """OUT/NAME.json for the script `python -m MODULE`, NAME being the module's last part; `command`:
    how it was started, when not as `python -m MODULE` with this process's arguments."""
    path = Path(out_dir) / f"{module.rpartition('.')[2]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"command": command or shlex.join(["python", "-m", module, *sys.argv[1:]]),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.system()}",
              "vector_extensions": vector_extensions(),
              **figures}
    path.write_text(json.dumps(record, indent=1))
    print(f"wrote {path}")
    return path


def write_results(results: dict, markdown: str, out_dir: str | Path) -> Path:
    """OUT/results.json and OUT/results.md (the report); returns the report's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown)
    return out / "results.md"
