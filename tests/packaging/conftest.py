"""Fixtures of the packaging tests: scripted coordinators on loopback, TLS certificates made with
openssl, and the pinned buf."""
import os
import pathlib
import subprocess
from dataclasses import dataclass

import grpc
import pytest

from protos.contract import buf_executable

from .scripted_coordinator import ScriptedCoordinator, serve


@pytest.fixture
def scripted():
    """scripted(outcomes, server_credentials=None) -> (servicer, "127.0.0.1:port"); stopped after the test."""
    servers = []

    def start(outcomes, server_credentials=None):
        servicer = ScriptedCoordinator(outcomes)
        server, port = serve(servicer, server_credentials)
        servers.append(server)
        return servicer, f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(grace=None)


@dataclass(frozen=True)
class Certificates:
    ca: pathlib.Path
    server_cert: pathlib.Path
    server_key: pathlib.Path
    client_cert: pathlib.Path
    client_key: pathlib.Path

    def server_credentials(self, require_client_auth: bool) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.server_key.read_bytes(), self.server_cert.read_bytes())],
            root_certificates=self.ca.read_bytes(), require_client_auth=require_client_auth)


def _openssl(*args: str, cwd: pathlib.Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _signed_certificate(folder: pathlib.Path, name: str, extensions: str) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-subj", f"/CN={name}",
             "-out", f"{name}.csr", cwd=folder)
    (folder / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=folder)


@pytest.fixture(scope="session")
def certificates(tmp_path_factory) -> Certificates:
    """A private CA, a server certificate for 127.0.0.1 and a client certificate, both signed by it."""
    folder = tmp_path_factory.mktemp("tls")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-subj", "/CN=specrej test CA",
             "-days", "2", "-out", "ca.pem", cwd=folder)
    _signed_certificate(folder, "server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _signed_certificate(folder, "client", "extendedKeyUsage=clientAuth\n")
    return Certificates(folder / "ca.pem", folder / "server.pem", folder / "server.key",
                        folder / "client.pem", folder / "client.key")


@pytest.fixture(scope="session")
def buf() -> str:
    """The pinned buf; its absence fails CI (CI=true) and skips elsewhere."""
    executable = buf_executable()
    if executable is None:
        message = "buf is not installed: run bin/test, which installs it into .tools/"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return executable
