"""The three services over TLS, with mutual TLS between the coordinator and the model services,
bearer tokens at the coordinator, /metrics bound to loopback, and certificates renewed on disk."""
import datetime
import ipaddress
import os
import socket
import ssl
import urllib.error
import urllib.request

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.local_stack import Stack
from common.tls import ChannelTls, secure_or_insecure_channel
from specrej.v1 import coordinator_pb2 as pb
from specrej.v1 import coordinator_pb2_grpc, generator_pb2, generator_pb2_grpc

TOKEN = "s3cret-token-for-tests"


class Authority:
    """A certificate authority made for the test, issuing certificates for 127.0.0.1 and localhost."""

    def __init__(self, folder):
        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "specrej test CA")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5))
                     .not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.path = self._write("ca.pem", self.cert.public_bytes(serialization.Encoding.PEM))

    def _write(self, name: str, data: bytes) -> str:
        path = self.folder / name
        path.write_bytes(data)
        return str(path)

    def issue(self, name: str, days: int = 1) -> tuple[str, str, int]:
        """(certificate file, key file, serial number) for `name`, valid for 127.0.0.1 and localhost
        for `days` days."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        serial = x509.random_serial_number()
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(self.cert.subject).public_key(key.public_key()).serial_number(serial)
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=days))
                .add_extension(x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                .sign(self.key, hashes.SHA256()))
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return (self._write(f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM)),
                self._write(f"{name}-key.pem", key_pem), serial)


@pytest.fixture(scope="module")
def authority(tmp_path_factory):
    return Authority(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def secure_stack(tiny_model_dir, authority, tmp_path_factory):
    folder = tmp_path_factory.mktemp("secure-stack")
    tokens = folder / "tokens"
    tokens.write_text(f"# one token per line\n{TOKEN}\nanother-token\n")
    client_cert, client_key, _ = authority.issue("client")

    def serving(name):
        cert, key, _ = authority.issue(name)
        return "--tls-cert", cert, "--tls-key", key

    model_flags = ("--model", str(tiny_model_dir), "--tls-client-ca", authority.path)
    stack = Stack(
        folder,
        generator_args=(*model_flags, *serving("generator"), "--kv-cache-budget", "1MiB"),
        reward_args=(*model_flags, *serving("reward")),
        coordinator_args=(*serving("coordinator"), "--upstream-tls-ca", authority.path,
                          "--upstream-tls-cert", client_cert, "--upstream-tls-key", client_key,
                          "--auth-token-file", str(tokens), "--metrics-host", "127.0.0.1"),
        tls=ChannelTls(authority.path, client_cert, client_key),
    )
    yield stack
    stack.stop()


def bearer(token: str) -> tuple:
    return (("authorization", f"Bearer {token}"),)


def request() -> pb.GenerateRequest:
    return pb.GenerateRequest(prompt="Name a colour.", n=4, max_new_tokens=12, seed=3, decision_every_tokens=4)


def test_a_request_goes_through_tls_and_mutual_tls_with_the_right_token(secure_stack):
    stub = coordinator_pb2_grpc.CoordinatorStub(secure_stack.channel)
    response = stub.Generate(request(), timeout=60, metadata=bearer(TOKEN))
    assert response.best.text and len(response.stats.rounds) >= 1


@pytest.mark.parametrize("metadata", [(), bearer("wrong-token"), (("authorization", TOKEN),)],
                         ids=["missing", "wrong", "not-bearer"])
def test_calls_without_a_valid_token_are_unauthenticated(secure_stack, metadata):
    stub = coordinator_pb2_grpc.CoordinatorStub(secure_stack.channel)
    with pytest.raises(grpc.RpcError) as error:
        stub.Generate(request(), timeout=10, metadata=metadata)
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.value.details().startswith("authorization:")


def test_health_needs_no_token(secure_stack):
    answer = health_pb2_grpc.HealthStub(secure_stack.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_the_generator_refuses_a_client_without_a_certificate(secure_stack, authority):
    with secure_or_insecure_channel(secure_stack.generator.address, ChannelTls(authority.path), aio=False) as channel:
        with pytest.raises(grpc.RpcError) as error:
            generator_pb2_grpc.GeneratorStub(channel).Info(generator_pb2.InfoRequest(), timeout=5)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_metrics_answer_only_on_the_address_they_are_bound_to(secure_stack):
    port = secure_stack.coordinator.metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert b"specrej_requests_total" in response.read()
    # 127.0.0.2 is this machine too (all of 127/8 is loopback), but nothing listens there.
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://127.0.0.2:{port}/metrics", timeout=5)


def served_serial(address: str, authority: Authority) -> int:
    """Serial number of the certificate a new TLS connection to `address` is shown."""
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=authority.path)
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=host) as connection:
            return x509.load_der_x509_certificate(connection.getpeercert(binary_form=True)).serial_number


def test_a_renewed_certificate_is_served_to_new_connections(secure_stack, authority):
    address = secure_stack.coordinator.address
    before = served_serial(address, authority)
    cert, key, serial = authority.issue("coordinator-renewed")
    # Rewrite the served files in place, as a renewed Kubernetes Secret is; a later mtime marks the change.
    served_cert = secure_stack.coordinator.process.args[secure_stack.coordinator.process.args.index("--tls-cert") + 1]
    served_key = secure_stack.coordinator.process.args[secure_stack.coordinator.process.args.index("--tls-key") + 1]
    later = os.stat(served_cert).st_mtime_ns + 2_000_000_000
    for source, target in ((key, served_key), (cert, served_cert)):
        with open(source, "rb") as new, open(target, "wb") as old:
            old.write(new.read())
        os.utime(target, ns=(later, later))
    assert serial != before
    assert served_serial(address, authority) == serial
    # And the renewed coordinator still answers over gRPC.
    with secure_or_insecure_channel(address, ChannelTls(authority.path), aio=False) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
