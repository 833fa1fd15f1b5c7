"""`python -m common.health_probe`, the exec probe of the TLS component, run as the kubelet runs it
against a real gRPC health server (plaintext here)."""
import subprocess
import sys
import time
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from common.local_stack import ROOT, free_port

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def health_server():
    """A gRPC server with only the standard health service; yields (address, servicer)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(None)


def probe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "common.health_probe", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


def test_serving_server_passes(health_server):
    address, servicer = health_server
    servicer.set("", SERVING)
    result = probe("--address", address)
    assert result.returncode == 0, result.stderr


def test_not_serving_server_fails_and_says_so(health_server):
    """A draining or still-loading server answers NOT_SERVING: the pod must leave the endpoints."""
    address, servicer = health_server
    servicer.set("", NOT_SERVING)
    result = probe("--address", address)
    assert result.returncode == 1
    assert "NOT_SERVING" in result.stderr


def test_unknown_service_name_fails(health_server):
    address, servicer = health_server
    servicer.set("", SERVING)
    result = probe("--address", address, "--service", "specrej.v1.Nothing")
    assert result.returncode == 1
    assert "NOT_FOUND" in result.stderr


def test_no_server_fails_within_the_timeout():
    started = time.monotonic()
    result = probe("--address", f"127.0.0.1:{free_port()}", "--timeout", "1")
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr or "DEADLINE_EXCEEDED" in result.stderr
    assert time.monotonic() - started < 10, "the probe must not outlive its timeout by much"


def test_missing_certificate_file_fails_cleanly(health_server, tmp_path):
    address, servicer = health_server
    servicer.set("", SERVING)
    result = probe("--address", address, "--tls-ca", str(tmp_path / "absent-ca.crt"))
    assert result.returncode == 1
    assert "absent-ca.crt" in result.stderr and "Traceback" not in result.stderr


def test_client_certificate_without_key_is_a_usage_error():
    result = probe("--tls-ca", "ca.crt", "--tls-cert", "tls.crt")
    assert result.returncode == 2
    assert "--tls-cert and --tls-key go together" in result.stderr
