"""The coordinator's Prometheus metrics."""
import prometheus_client as prom

from specrej.v1 import coordinator_pb2 as pb

SERVICE = "coordinator"

REQUESTS = prom.Counter("specrej_requests_total", "Generate requests by method and final gRPC status.",
                        ["service", "method", "code"])
REQUEST_SECONDS = prom.Histogram("specrej_request_duration_seconds", "Time to answer a Generate request.",
                                 ["service", "method"],
                                 buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600))
ROUNDS = prom.Histogram("specrej_request_rounds", "Decision points per request.", ["service", "method"],
                        buckets=(0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20))
RANKED = prom.Counter("specrej_candidates_ranked_total", "Candidates ranked at decision points.", ["service"])
REJECTED = prom.Counter("specrej_candidates_rejected_total", "Candidates rejected at decision points.", ["service"])
KEPT = prom.Counter("specrej_candidates_kept_total", "Candidates kept at decision points.", ["service"])
SURVIVORS = prom.Histogram("specrej_round_survivors", "Candidates kept at each decision point.", ["service"],
                           buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
DECODED_TOKENS = prom.Counter("specrej_decoded_tokens_total", "Tokens decoded for requests, summed over candidates.",
                              ["service", "method"])
STAGE_SECONDS = prom.Counter("specrej_stage_seconds_total",
                             "Time requests spent generating, scoring, and in the coordinator itself.",
                             ["service", "stage"])
IN_FLIGHT = prom.Gauge("specrej_requests_in_flight", "Requests being answered.", ["service"])
QUEUED = prom.Gauge("specrej_requests_queued",
                    "Admitted requests waiting for the generator to open their session.", ["service"])
REWARD = prom.Histogram("specrej_response_reward", "Reward of the returned response.", ["service", "method"],
                        buckets=(-10, -5, -3, -2, -1.5, -1, -0.75, -0.5, -0.25, 0, 0.5, 1, 2, 5, 10))


def method_name(method: int) -> str:
    return pb.Method.Name(method) if method in pb.Method.values() else str(method)


def observe_round(record: pb.Round) -> None:
    RANKED.labels(SERVICE).inc(record.active_before)
    REJECTED.labels(SERVICE).inc(record.rejected)
    KEPT.labels(SERVICE).inc(record.kept)
    SURVIVORS.labels(SERVICE).observe(record.kept)


def observe_result(response: pb.GenerateResponse) -> None:
    stats, method = response.stats, method_name(response.stats.method)
    ROUNDS.labels(SERVICE, method).observe(len(stats.rounds))
    STAGE_SECONDS.labels(SERVICE, "generate").inc(stats.generate_seconds)
    STAGE_SECONDS.labels(SERVICE, "score").inc(stats.score_seconds)
    STAGE_SECONDS.labels(SERVICE, "coordinate").inc(stats.coordinator_seconds)
    REWARD.labels(SERVICE, method).observe(response.best.score)


def observe_decoded(method: str, tokens: int) -> None:
    """Tokens a request had decoded when it ended, however it ended (the generator counts them too);
    requests that never reached the generator add nothing."""
    if tokens:
        DECODED_TOKENS.labels(SERVICE, method).inc(tokens)


def _initialise() -> None:
    """Create every label set known in advance, at zero, when the process starts: a fresh
    coordinator then reports 0 in flight and 0 queued instead of nothing, and rate() counts the
    first request (a series that appears already incremented shows no increase)."""
    for metric in (IN_FLIGHT, QUEUED, RANKED, REJECTED, KEPT, SURVIVORS):
        metric.labels(SERVICE)
    for stage in ("generate", "score", "coordinate"):
        STAGE_SECONDS.labels(SERVICE, stage)
    for method in pb.Method.keys():
        REQUESTS.labels(SERVICE, method, "OK")
        for metric in (REQUEST_SECONDS, ROUNDS, DECODED_TOKENS, REWARD):
            metric.labels(SERVICE, method)


_initialise()
