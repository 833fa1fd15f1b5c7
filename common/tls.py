"""TLS for servers (optionally requiring client certificates) and for the channels to them.

Server certificates are re-read when their files change, so a renewed certificate (cert-manager
rewrites the mounted Secret) is served to new connections without a restart."""
import logging
import os
from dataclasses import dataclass

import grpc

log = logging.getLogger(__name__)


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as handle:
        return handle.read()


def _mtimes(paths) -> tuple:
    return tuple(os.stat(p).st_mtime_ns if p else 0 for p in paths)


@dataclass(frozen=True)
class ServerTls:
    cert: str
    key: str
    client_ca: str | None = None  # set = clients must present a certificate signed by it (mTLS)

    @classmethod
    def from_args(cls, args) -> "ServerTls | None":
        if not (args.tls_cert or args.tls_key or args.tls_client_ca):
            return None
        if not (args.tls_cert and args.tls_key):
            raise SystemExit("--tls-cert and --tls-key go together (and --tls-client-ca needs both)")
        return cls(args.tls_cert, args.tls_key, args.tls_client_ca)

    def _configuration(self):
        return grpc.ssl_server_certificate_configuration(
            [(_read(self.key), _read(self.cert))], root_certificates=_read(self.client_ca))

    def credentials(self) -> grpc.ServerCredentials:
        paths = (self.cert, self.key, self.client_ca)
        seen = [_mtimes(paths)]

        def fetch_if_changed():
            # Called by gRPC on each new handshake; None keeps the current certificates.
            try:
                now = _mtimes(paths)
                if now == seen[0]:
                    return None
                configuration = self._configuration()
            except OSError as error:  # a Secret being rewritten: keep serving the old one
                log.warning("TLS files not readable, keeping the current ones: %s", error)
                return None
            seen[0] = now
            log.info("TLS certificates changed on disk; serving the new ones")
            return configuration

        return grpc.dynamic_ssl_server_credentials(
            self._configuration(), fetch_if_changed, require_client_authentication=bool(self.client_ca))


@dataclass(frozen=True)
class ChannelTls:
    ca: str | None = None  # None = the system's roots
    cert: str | None = None  # client certificate for mTLS
    key: str | None = None

    @classmethod
    def from_upstream_args(cls, args) -> "ChannelTls | None":
        """From common.flags.add_upstream_tls_flags; None (plaintext) when none of them is set."""
        if not (args.upstream_tls_ca or args.upstream_tls_cert or args.upstream_tls_key):
            return None
        if bool(args.upstream_tls_cert) != bool(args.upstream_tls_key):
            raise SystemExit("--upstream-tls-cert and --upstream-tls-key go together")
        return cls(args.upstream_tls_ca, args.upstream_tls_cert, args.upstream_tls_key)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=_read(self.ca), private_key=_read(self.key),
                                            certificate_chain=_read(self.cert))


def secure_or_insecure_channel(target: str, tls: ChannelTls | None, options=(), aio: bool = True):
    """A channel to `target`, over TLS when `tls` is given."""
    module = grpc.aio if aio else grpc
    if tls is None:
        return module.insecure_channel(target, options=list(options))
    return module.secure_channel(target, tls.credentials(), options=list(options))
