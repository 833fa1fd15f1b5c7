"""The generator's Prometheus metrics."""
import prometheus_client as prom

SERVICE = "generator"
_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)

SESSIONS_ACTIVE = prom.Gauge("specrej_generator_sessions_active",
                             "Sessions admitted (holding KV-cache memory); queued ones are not counted.", ["service"])
SEQUENCES_ACTIVE = prom.Gauge("specrej_generator_sequences_active", "Sequences still decoding, over all sessions.", ["service"])
BATCH_SIZE = prom.Histogram("specrej_generator_batch_size", "Rows in each decode step, over all sessions.", ["service"],
                            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
DECODE_STEP_SECONDS = prom.Histogram("specrej_generator_decode_step_seconds", "Time of one decode step over the rows of every decoding session.",
                                     ["service"], buckets=_STEP_BUCKETS)
PREFILL_SECONDS = prom.Histogram("specrej_generator_prefill_seconds", "Time to prefill a prompt and sample the first tokens.",
                                 ["service"], buckets=_STEP_BUCKETS + (5, 10))
PRUNE_SECONDS = prom.Histogram("specrej_generator_prune_seconds", "Time to drop rejected rows from the KV cache.",
                               ["service"], buckets=_STEP_BUCKETS)
KV_CACHE_BYTES = prom.Gauge("specrej_generator_kv_cache_bytes", "KV-cache bytes held by all sessions.", ["service"])
KV_CACHE_BUDGET_BYTES = prom.Gauge("specrej_generator_kv_cache_budget_bytes", "KV-cache budget of the service.", ["service"])
KV_CACHE_USAGE = prom.Gauge("specrej_generator_kv_cache_usage_ratio", "KV-cache bytes held over the budget.", ["service"])
TOKENS = prom.Counter("specrej_generator_tokens_total", "Tokens decoded, summed over sequences.", ["service"])


def bind(backend) -> None:
    """Gauges that read the backend's state at scrape time."""
    budget = backend.info.kv_cache_budget_bytes
    SESSIONS_ACTIVE.labels(SERVICE).set_function(backend.active_sessions)
    SEQUENCES_ACTIVE.labels(SERVICE).set_function(backend.running_sequences)
    KV_CACHE_BYTES.labels(SERVICE).set_function(backend.kv_cache_bytes)
    KV_CACHE_BUDGET_BYTES.labels(SERVICE).set(budget)
    KV_CACHE_USAGE.labels(SERVICE).set_function(lambda: backend.kv_cache_bytes() / max(budget, 1))


# Series at zero from start-up, so rate() counts the first request (see coordinator/metrics.py).
for _metric in (BATCH_SIZE, DECODE_STEP_SECONDS, PREFILL_SECONDS, PRUNE_SECONDS, TOKENS):
    _metric.labels(SERVICE)
