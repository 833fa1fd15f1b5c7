"""A gRPC health check for Kubernetes exec probes: exit 0 when the server answers SERVING, 1 otherwise.

Kubernetes' native gRPC probes cannot speak TLS, so servers that require TLS (and client
certificates) are probed from inside the pod with this instead:

    python -m common.health_probe --address 127.0.0.1:50051 \\
        --tls-ca /etc/specrej/tls/ca.crt --tls-cert /etc/specrej/tls/tls.crt --tls-key /etc/specrej/tls/tls.key

Without --tls-ca it connects in plaintext. The reason for a failure goes to stderr, which the
kubelet shows in the pod's events.
"""
import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.flags import add_flag
from common.tls import ChannelTls, secure_or_insecure_channel


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m common.health_probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flag(parser, "address", env="SPECREJ_PROBE_ADDRESS", default="127.0.0.1:50050",
             help="host:port of the gRPC server to check")
    add_flag(parser, "service", env="SPECREJ_PROBE_SERVICE", default="",
             help="health service name to ask about; empty = the server as a whole")
    add_flag(parser, "timeout", env="SPECREJ_PROBE_TIMEOUT", default=4.0, type=float,
             help="seconds to wait for the answer (keep below the probe's timeoutSeconds)")
    add_flag(parser, "tls-ca", env="SPECREJ_PROBE_TLS_CA", default=None,
             help="PEM CA bundle that signed the server's certificate; unset = plaintext")
    add_flag(parser, "tls-cert", env="SPECREJ_PROBE_TLS_CERT", default=None,
             help="PEM client certificate, for servers that require one (mTLS); needs --tls-key")
    add_flag(parser, "tls-key", env="SPECREJ_PROBE_TLS_KEY", default=None,
             help="PEM private key of --tls-cert")
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_cert and not args.tls_ca:
        parser.error("--tls-cert needs --tls-ca (a client certificate is only sent over TLS)")
    return args


def open_channel(args: argparse.Namespace) -> grpc.Channel:
    tls = ChannelTls(args.tls_ca, args.tls_cert, args.tls_key) if args.tls_ca else None
    return secure_or_insecure_channel(args.address, tls, aio=False)


def check(args: argparse.Namespace) -> tuple[bool, str]:
    """(serving, what was seen)."""
    try:
        with open_channel(args) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
    except grpc.RpcError as error:
        return False, f"{args.address}: {error.code().name}: {error.details()}"
    except OSError as error:  # an unreadable certificate or key file
        return False, f"{args.address}: {error}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return response.status == health_pb2.HealthCheckResponse.SERVING, f"{args.address}: {status}"


def main(argv: list[str] | None = None) -> int:
    serving, seen = check(parse_args(argv))
    if not serving:
        print(seen, file=sys.stderr)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
