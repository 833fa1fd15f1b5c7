"""A generator whose vLLM engine dies leaves the fleet: health NOT_SERVING, then the process exits
with an error, so that its orchestrator restarts it, instead of serving only failures."""
import os
import pathlib
import signal
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
