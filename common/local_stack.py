"""Running the three services as processes on loopback: for the demo, the tests and the benchmark."""
import os
import pathlib
import socket
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .tls import ChannelTls, secure_or_insecure_channel

ROOT = pathlib.Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_serving(address: str, process: subprocess.Popen, timeout: float = 300.0,
                 tls: ChannelTls | None = None) -> None:
    """Block until the server's health says SERVING; fail early if the process dies."""
    deadline = time.monotonic() + timeout
    with secure_or_insecure_channel(address, tls, aio=False) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{address} exited with {process.returncode}")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"{address} did not become SERVING in {timeout}s")


def stop_process(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `grace` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Service:
    """One service as a real process: `python -m module --port P --metrics-port M ...` (free ports unless
    given: a restarted replica takes its old ones); `tls` is how to reach it when it serves TLS; `env`
    adds to the environment it inherits."""

    def __init__(self, module: str, *args: str, log_dir: pathlib.Path, wait: bool = True,
                 tls: ChannelTls | None = None, port: int | None = None, metrics_port: int | None = None,
                 env: dict[str, str] | None = None):
        self.module, self.tls = module, tls
        self.port, self.metrics_port = port or free_port(), metrics_port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = pathlib.Path(log_dir) / f"{module}-{self.port}.log"
        self._log = open(self.log_path, "a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(self.port),
             "--metrics-port", str(self.metrics_port), *args],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        if wait:
            self.wait_serving()

    def wait_serving(self) -> None:
        try:
            wait_serving(self.address, self.process, tls=self.tls)
        except Exception:
            self.stop()
            raise RuntimeError(f"{self.module} failed to start:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        stop_process(self.process)
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text()


class Stack:
    """Generator, reward and coordinator as real processes, wired together on loopback.
    The model services load in parallel. With `tls`, all three serve TLS (their flags come with the
    *_args) and `tls` is what this process presents to them."""

    def __init__(self, log_dir, generator_args=(), reward_args=(), coordinator_args=(), tls: ChannelTls | None = None):
        # Each model service starts as a user would start it by hand, with its default share of the cores.
        self.generator = Service("generator_service", *generator_args, log_dir=log_dir, wait=False, tls=tls)
        self.reward = Service("reward_service", *reward_args, log_dir=log_dir, wait=False, tls=tls)
        try:
            self.generator.wait_serving()
            self.reward.wait_serving()
            self.coordinator = Service("coordinator", "--generator", self.generator.address, "--reward",
                                       self.reward.address, *coordinator_args, log_dir=log_dir, tls=tls)
        except Exception:
            self.generator.stop()
            self.reward.stop()
            raise
        self.channel = secure_or_insecure_channel(self.coordinator.address, tls, aio=False)

    @property
    def services(self):
        return [self.coordinator, self.generator, self.reward]

    def stop(self) -> None:
        self.channel.close()
        for service in self.services:
            service.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
