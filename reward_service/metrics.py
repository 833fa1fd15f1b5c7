"""The reward service's Prometheus metrics."""
import prometheus_client as prom

SERVICE = "reward"

BATCH_SIZE = prom.Histogram("specrej_reward_batch_size", "Sequences in each forward pass of the reward model.",
                            ["service"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
SCORE_SECONDS = prom.Histogram("specrej_reward_score_seconds",
                               "Model time of each batch of Score requests run together.", ["service"],
                               buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
SEQUENCES = prom.Counter("specrej_reward_sequences_total", "Responses scored.", ["service"])
TOKENS = prom.Counter("specrej_reward_tokens_total", "Tokens read by the reward model.", ["service"])
ABANDONED = prom.Counter("specrej_reward_abandoned_total",
                        "Score calls whose model work stopped before their end: the caller went away or the "
                        "deadline passed.", ["service"])
CACHE_BYTES = prom.Gauge("specrej_reward_session_cache_bytes",
                         "Keys/values kept for scoring sessions between their rounds.", ["service"])
CACHE_SESSIONS = prom.Gauge("specrej_reward_session_cache_sessions",
                           "Scoring sessions open (ScoreSession streams).", ["service"])


def observe_batch(results, pass_sizes: list[int], seconds: float) -> None:
    for size in pass_sizes:
        BATCH_SIZE.labels(SERVICE).observe(size)
    SCORE_SECONDS.labels(SERVICE).observe(seconds)
    SEQUENCES.labels(SERVICE).inc(sum(len(r.scores) for r in results))
    TOKENS.labels(SERVICE).inc(sum(r.tokens for r in results))


def observe_cache(sessions) -> None:
    CACHE_BYTES.labels(SERVICE).set(sessions.nbytes)
    CACHE_SESSIONS.labels(SERVICE).set(len(sessions))


# Series at zero from start-up, so rate() counts the first request (see coordinator/metrics.py).
for _metric in (BATCH_SIZE, SCORE_SECONDS, SEQUENCES, TOKENS, ABANDONED, CACHE_BYTES, CACHE_SESSIONS):
    _metric.labels(SERVICE)
