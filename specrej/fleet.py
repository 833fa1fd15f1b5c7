"""Channel settings for a service run as several replicas behind one name (a headless Kubernetes
Service resolves to every replica): requests go round robin over the replicas whose health service
says SERVING, so a draining, loading or dead replica is skipped at once; a call that failed
UNAVAILABLE before any response headers arrived (it never reached a servicer: no replica was
ready, or the one picked was draining) is tried again on another; and a lost connection is
retried often enough that a replica is found again within about a second of its being ready."""
import json

# Retries of calls that never reached a servicer: a few, quickly, as each goes to another replica.
# gRPC tries again only while nothing of the answer has come back (no headers, no message), so a
# stream is never replayed once its first message has been answered.
RETRY_POLICY = {
    "maxAttempts": 4,
    "initialBackoff": "0.05s",
    "maxBackoff": "0.5s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
# gRPC's default reconnect backoff grows to 120 s, so a service that comes up after its client
# would be found only up to minutes later; capped at 1 s it is found within about a second. A lost
# replica makes the channel look its name up again, by default at most every 30 s: a restarted pod
# comes back under a new address, which is then found within a second or so of its being ready.
RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.dns_min_time_between_resolutions_ms", 1000),
]


def service_config(service_name: str, retry: bool = True) -> dict:
    """The gRPC service config for a channel to the replicas of `service_name` (its full gRPC name,
    also the name its health service answers for); without `retry` for callers that retry
    UNAVAILABLE themselves."""
    config = {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": service_name}}
    if retry:
        config["methodConfig"] = [{"name": [{"service": service_name}], "retryPolicy": RETRY_POLICY}]
    return config


def channel_options(service_name: str, retry: bool = True) -> list[tuple[str, object]]:
    """Channel options (for grpc.*_channel's `options`) that apply service_config(service_name, retry)."""
    return [("grpc.service_config", json.dumps(service_config(service_name, retry))), *RECONNECT_OPTIONS]
