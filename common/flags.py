"""Command-line flags that fall back to environment variables, documented in --help."""
import argparse
import os
import re


def add_flag(parser: argparse.ArgumentParser, name: str, *, env: str, default=None, type=str, help: str, **kwargs):
    """Add `--name`; its value comes from the flag, else from $env, else from `default`."""
    raw = os.environ.get(env)
    value = type(raw) if raw not in (None, "") else default
    shown = "unset" if default is None else default
    parser.add_argument(
        f"--{name}", default=value, type=type, help=f"{help} [env {env}; default {shown}]", **kwargs
    )


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4, "tb": 1000**4, "tib": 1024**4}


def parse_bytes(text: str) -> int:
    """'2GiB', '512MB', '1e9' -> bytes."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size in bytes: {text!r} (e.g. 2GiB, 512MB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def parse_cpu_threads(text: str) -> int | str:
    """'auto' or a count of threads (0 = torch's default)."""
    if text == "auto":
        return text
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a thread count: {text!r} (auto, 0, 1, 2, ...)")
    return int(text)


def add_model_service_flags(parser: argparse.ArgumentParser, *, default_port: int, default_metrics_port: int):
    """The flags the generator and reward services share."""
    add_server_flags(parser, default_port=default_port, default_metrics_port=default_metrics_port)
    add_flag(parser, "model", env="SPECREJ_MODEL", default=None,
             help="Hugging Face model folder or hub id; unset = the embedded SmolLM2-135M-Instruct")
    add_flag(parser, "device", env="SPECREJ_DEVICE", default="auto",
             help="torch device: cpu, cuda, cuda:1, or auto (cuda when available)")
    add_flag(parser, "dtype", env="SPECREJ_DTYPE", default="auto",
             help="float32, bfloat16 or float16; auto = bfloat16 on CUDA, float32 on CPU")
    add_flag(parser, "model-cache", env="SPECREJ_MODEL_CACHE", default=None,
             help="folder for the converted default model; unset = ~/.cache/specrej")
    add_flag(parser, "max-messages", env="SPECREJ_MAX_MESSAGES", default=256, type=int,
             help="most messages in one request's conversation")
    add_flag(parser, "max-prompt-tokens", env="SPECREJ_MAX_PROMPT_TOKENS", default=0, type=int,
             help="most tokens in a request's conversation; 0 = the model's context less one")
    add_flag(parser, "cpu-threads", env="SPECREJ_CPU_THREADS", default="auto", type=parse_cpu_threads,
             help="threads for the model's work on CPU; auto = $OMP_NUM_THREADS when set, else half this "
                  "process's cores, so the two model services on one machine do not fight over them; "
                  "0 = torch's default (one per core). On CPU with a count (auto's included), the generator's "
                  "engine works on the first that many cores and the reward service on the last ones")


def add_server_flags(parser: argparse.ArgumentParser, *, default_port: int, default_metrics_port: int,
                     reflection: str = "off"):
    add_flag(parser, "host", env="SPECREJ_HOST", default="[::]", help="address to bind the gRPC server to")
    add_flag(parser, "port", env="SPECREJ_PORT", default=default_port, type=int, help="gRPC port")
    add_flag(parser, "metrics-port", env="SPECREJ_METRICS_PORT", default=default_metrics_port, type=int,
             help="HTTP port of the Prometheus /metrics endpoint; 0 = off")
    add_flag(parser, "metrics-host", env="SPECREJ_METRICS_HOST", default=None,
             help="address to bind the /metrics endpoint to; unset = the same as --host")
    add_flag(parser, "tls-cert", env="SPECREJ_TLS_CERT", default=None,
             help="PEM certificate chain to serve over TLS (with --tls-key); re-read when the file changes")
    add_flag(parser, "tls-key", env="SPECREJ_TLS_KEY", default=None, help="PEM private key of --tls-cert")
    add_flag(parser, "tls-client-ca", env="SPECREJ_TLS_CLIENT_CA", default=None,
             help="PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS)")
    add_flag(parser, "reflection", env="SPECREJ_REFLECTION", default=reflection, choices=["on", "off"],
             help="serve gRPC server reflection (lets tools such as grpcurl list the API)")
    add_flag(parser, "otlp-endpoint", env="SPECREJ_OTLP_ENDPOINT", default=None,
             help="OpenTelemetry collector to send traces to over OTLP/gRPC (http://HOST:4317, or https:// for "
                  "TLS); unset = no tracing")
    add_flag(parser, "drain-grace-seconds", env="SPECREJ_DRAIN_GRACE_SECONDS", default=300.0, type=float,
             help="on SIGTERM: health goes NOT_SERVING and new calls get UNAVAILABLE; 1 s later the server sends "
                  "GOAWAY and closes its listener, and calls in flight get the rest of this long to finish; keep it "
                  "below the pod's terminationGracePeriodSeconds. The coordinator ends every request after this "
                  "long, whatever its client's deadline")


def add_upstream_tls_flags(parser: argparse.ArgumentParser):
    """TLS for the channels a service opens to other services (common.tls.ChannelTls)."""
    add_flag(parser, "upstream-tls-ca", env="SPECREJ_UPSTREAM_TLS_CA", default=None,
             help="PEM CA bundle that signed the upstream services' certificates; setting any --upstream-tls-* "
                  "flag turns TLS on for upstream calls (without this one, the system's roots are trusted)")
    add_flag(parser, "upstream-tls-cert", env="SPECREJ_UPSTREAM_TLS_CERT", default=None,
             help="PEM client certificate to present upstream (mutual TLS, with --upstream-tls-key)")
    add_flag(parser, "upstream-tls-key", env="SPECREJ_UPSTREAM_TLS_KEY", default=None,
             help="PEM private key of --upstream-tls-cert")
