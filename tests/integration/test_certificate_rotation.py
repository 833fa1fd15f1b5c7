"""Certificates renewed on disk while the coordinator runs: its next connections to a model service
present the new client certificate and trust the new CA (the server, renewed too, trusts only the
new CA), a session already running finishes on its old connection, and the expiry gauges follow.
A real TLS server (common.server) on loopback, in this process."""
import asyncio
import os
import pathlib
import shutil

from prometheus_client import REGISTRY

from common.server import Server, ServerOptions
from common.tls import ChannelTls, ServerTls, not_after
from coordinator.clients import GeneratorClient
from specrej.v1 import generator_pb2, generator_pb2_grpc
from tests.integration.test_fleet import GENERATOR, Replica
from tests.integration.test_security import Authority


def expiry(service: str, role: str) -> float | None:
    return REGISTRY.get_sample_value("specrej_tls_certificate_expiry_timestamp_seconds",
                                     {"service": service, "role": role})


class Secret:
    """A mounted Secret: fixed paths whose content a renewal rewrites."""

    def __init__(self, folder: pathlib.Path):
        self.ca, self.server_cert, self.server_key = folder / "ca.pem", folder / "server.pem", folder / "server-key.pem"
        self.client_cert, self.client_key = folder / "client.pem", folder / "client-key.pem"

    def install(self, authority: Authority, days: int) -> None:
        """Everything issued by `authority`, valid for `days` days, each file with a later mtime than before."""
        server_cert, server_key, _ = authority.issue("generator", days)
        client_cert, client_key, _ = authority.issue("coordinator", days)
        for source, target in ((authority.path, self.ca), (server_key, self.server_key), (server_cert, self.server_cert),
                               (client_key, self.client_key), (client_cert, self.client_cert)):
            later = os.stat(target).st_mtime_ns + 2_000_000_000 if target.exists() else None
            shutil.copyfile(source, target)
            if later:
                os.utime(target, ns=(later, later))

    def expiries(self) -> tuple[float, float]:
        """(client, server) certificate notAfter."""
        return not_after(self.client_cert.read_bytes()), not_after(self.server_cert.read_bytes())


def test_renewed_certificates_are_used_by_new_connections_and_their_expiry_is_exported(tmp_path):
    folders = {name: tmp_path / name for name in ("secret", "old-ca", "new-ca")}
    for folder in folders.values():
        folder.mkdir()
    secret, old, new = Secret(folders["secret"]), Authority(folders["old-ca"]), Authority(folders["new-ca"])
    secret.install(old, days=1)
    old_expiries = secret.expiries()

    async def scenario():
        tls = ServerTls(str(secret.server_cert), str(secret.server_key), client_ca=str(secret.ca))
        server = Server("generator", [GENERATOR], ServerOptions(host="127.0.0.1", port=0, metrics_port=0, tls=tls))
        generator_pb2_grpc.add_GeneratorServicer_to_server(Replica(7), server.grpc)
        await server.start()
        await server.mark_serving()
        client = GeneratorClient(f"127.0.0.1:{server.port}",
                                 ChannelTls(str(secret.ca), str(secret.client_cert), str(secret.client_key)))
        try:
            first = client.channel
            async with client.session(timeout=30) as session:
                await session.start(generator_pb2.StartSession())
                before = expiry("coordinator", "client"), expiry("generator", "server")
                secret.install(new, days=2)
                for _ in range(50):  # the files are looked at about once a second
                    if client.channel is not first:
                        break
                    await asyncio.sleep(0.1)
                info = await client.stub.Info(generator_pb2.InfoRequest(), timeout=5)
                after = expiry("coordinator", "client"), expiry("generator", "server")
                # The session opened before the renewal goes on over the old connection.
                still_running = await session.start(generator_pb2.StartSession())
            return info, still_running, before, after
        finally:
            await client.close()
            await server.drain(grace=0)

    info, still_running, before, after = asyncio.run(scenario())
    assert info.max_context_tokens == 7 and still_running.n == 7
    assert before == old_expiries
    assert after == secret.expiries() and after[0] > before[0] and after[1] > before[1]
