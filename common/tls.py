"""TLS for servers (optionally requiring client certificates) and for the channels to them.

Certificates are re-read when their files change, so a renewed certificate (cert-manager rewrites
the mounted Secret) is used by new connections without a restart: a server presents it at the next
handshake, a client channel is replaced by one built with it. Each (re)load sets the gauge
specrej_tls_certificate_expiry_timestamp_seconds{service, role} to the certificate's notAfter."""
import asyncio
import logging
import os
import time
from dataclasses import dataclass

import grpc
from cryptography import x509

from . import metrics

log = logging.getLogger(__name__)


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as handle:
        return handle.read()


def _mtimes(paths) -> tuple:
    return tuple(os.stat(p).st_mtime_ns if p else 0 for p in paths)


def not_after(certificate_chain: bytes) -> float:
    """Unix time at which the chain's first (leaf) certificate expires."""
    return x509.load_pem_x509_certificate(certificate_chain).not_valid_after_utc.timestamp()


def _record_expiry(service: str, role: str, certificate_chain: bytes) -> None:
    metrics.TLS_CERTIFICATE_EXPIRY.labels(service, role).set(not_after(certificate_chain))


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

    def _configuration(self, service: str):
        chain = _read(self.cert)
        configuration = grpc.ssl_server_certificate_configuration(
            [(_read(self.key), chain)], root_certificates=_read(self.client_ca))
        _record_expiry(service, "server", chain)
        return configuration

    def credentials(self, service: str) -> grpc.ServerCredentials:
        """Credentials that follow the files; `service` labels the expiry gauge."""
        paths = (self.cert, self.key, self.client_ca)
        seen = [_mtimes(paths)]

        def fetch_if_changed():
            # Called by gRPC on each new handshake; None keeps the current certificates.
            try:
                now = _mtimes(paths)
                if now == seen[0]:
                    return None
                configuration = self._configuration(service)
            except (OSError, ValueError) as error:  # a Secret being rewritten: keep serving the old one
                log.warning("TLS files not readable, keeping the current ones: %s", error)
                return None
            seen[0] = now
            log.info("TLS certificates changed on disk; serving the new ones")
            return configuration

        return grpc.dynamic_ssl_server_credentials(
            self._configuration(service), fetch_if_changed, require_client_authentication=bool(self.client_ca))


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

    def credentials(self, service: str | None = None) -> grpc.ChannelCredentials:
        """Credentials from the files as they are now; with `service`, the client certificate's
        expiry goes to the gauge under that service's name."""
        chain = _read(self.cert)
        credentials = grpc.ssl_channel_credentials(root_certificates=_read(self.ca), private_key=_read(self.key),
                                                   certificate_chain=chain)
        if service and chain:
            _record_expiry(service, "client", chain)
        return credentials

    def files_version(self) -> tuple:
        """Changes when any of the files is rewritten."""
        return _mtimes((self.ca, self.cert, self.key))


def secure_or_insecure_channel(target: str, tls: ChannelTls | None, options=(), aio: bool = True):
    """A channel to `target`, over TLS when `tls` is given."""
    module = grpc.aio if aio else grpc
    if tls is None:
        return module.insecure_channel(target, options=list(options))
    return module.secure_channel(target, tls.credentials(), options=list(options))


class ReloadingChannel:
    """A grpc.aio channel to `target` that follows its TLS files. gRPC fixes a channel's credentials
    when the channel is made, so when the files change (checked at most every `check_seconds`, when
    the channel is asked for) a new channel is built from them for the calls that follow, and the
    old one is closed once the calls already on it have ended."""

    def __init__(self, target: str, tls: ChannelTls | None, options=(), service: str | None = None,
                 check_seconds: float = 1.0, retired_grace_seconds: float = 3600.0):
        self.target, self.tls, self.options, self.service = target, tls, list(options), service
        self.check_seconds, self.retired_grace_seconds = check_seconds, retired_grace_seconds
        self._version = tls.files_version() if tls else None
        self._channel = self._build()
        self._next_check = time.monotonic() + check_seconds
        self._retiring: dict[asyncio.Task, grpc.aio.Channel] = {}

    def _build(self) -> grpc.aio.Channel:
        if self.tls is None:
            return grpc.aio.insecure_channel(self.target, options=self.options)
        return grpc.aio.secure_channel(self.target, self.tls.credentials(self.service), options=self.options)

    def current(self) -> grpc.aio.Channel:
        """The channel for a new call."""
        if self.tls is not None and time.monotonic() >= self._next_check:
            self._next_check = time.monotonic() + self.check_seconds
            self._follow_files()
        return self._channel

    def _follow_files(self) -> None:
        try:
            version = self.tls.files_version()
            if version == self._version:
                return
            channel = self._build()
        except (OSError, ValueError) as error:  # a Secret being rewritten: keep the current channel
            log.warning("TLS files for %s not readable, keeping the current ones: %s", self.target, error)
            return
        log.info("TLS certificates for %s changed on disk; new calls use them", self.target)
        retired, self._channel, self._version = self._channel, channel, version
        task = asyncio.get_running_loop().create_task(retired.close(self.retired_grace_seconds))
        self._retiring[task] = retired
        task.add_done_callback(self._retiring.pop)

    async def close(self) -> None:
        """Close the channel now, and any old one still finishing its calls."""
        retiring = dict(self._retiring)
        for task in retiring:
            task.cancel()
        await asyncio.gather(*retiring, return_exceptions=True)
        for channel in (*retiring.values(), self._channel):
            await channel.close()
