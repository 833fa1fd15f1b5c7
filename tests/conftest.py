"""Shared fixtures: tiny random models with the real tokenizer, and the real services started as
processes on loopback ports."""
import os
import pathlib
import socket
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = pathlib.Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_serving(address: str, process: subprocess.Popen, timeout: float = 180.0) -> None:
    """Block until the server's health says SERVING; fail early if the process dies."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
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


class Service:
    """One service as a real process: `python -m module --port P --metrics-port M ...`."""

    def __init__(self, module: str, *args: str, log_dir: pathlib.Path, wait: bool = True):
        self.module = module
        self.port, self.metrics_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{module}-{self.port}.log"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(self.port),
             "--metrics-port", str(self.metrics_port), *args],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        if wait:
            self.wait_serving()

    def wait_serving(self) -> None:
        try:
            wait_serving(self.address, self.process)
        except Exception:
            self.stop()
            raise RuntimeError(f"{self.module} failed to start:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text()


@pytest.fixture(scope="session")
def tokenizer_dir():
    """The embedded default model's folder (converted once); its tokenizer serves the tiny models."""
    from common.models import resolve_model

    return pathlib.Path(resolve_model(None))


def _tiny_config(tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer_dir):
    """A randomly initialised 2-layer Llama with SmolLM2's real tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    model = LlamaForCausalLM(_tiny_config(tokenizer))
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory, tokenizer_dir):
    """A randomly initialised Llama sequence classifier (one reward logit) with the real tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(1)
    config = _tiny_config(tokenizer)
    config.num_labels = 1
    model = LlamaForSequenceClassification(config)
    folder = tmp_path_factory.mktemp("tiny-classifier")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def service_logs(tmp_path_factory):
    return tmp_path_factory.mktemp("service-logs")


class Stack:
    """Generator, reward and coordinator as real processes, wired together on loopback."""

    def __init__(self, log_dir, generator_args=(), reward_args=(), coordinator_args=()):
        self.generator = Service("generator_service", *generator_args, log_dir=log_dir, wait=False)
        self.reward = Service("reward_service", *reward_args, log_dir=log_dir, wait=False)
        self.generator.wait_serving()
        self.reward.wait_serving()
        self.coordinator = Service("coordinator", "--generator", self.generator.address, "--reward",
                                   self.reward.address, *coordinator_args, log_dir=log_dir)
        self.channel = grpc.insecure_channel(self.coordinator.address)

    @property
    def services(self):
        return [self.coordinator, self.generator, self.reward]

    def stop(self) -> None:
        self.channel.close()
        for service in self.services:
            service.stop()


@pytest.fixture(scope="session")
def tiny_stack(tiny_model_dir, service_logs):
    """All three services on the tiny model; a small KV budget so memory-driven decision points come early."""
    stack = Stack(
        service_logs,
        generator_args=("--model", str(tiny_model_dir), "--kv-cache-budget", "1MiB", "--max-sessions", "2"),
        reward_args=("--model", str(tiny_model_dir)),
    )
    yield stack
    stack.stop()
