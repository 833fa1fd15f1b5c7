"""The reward service's Prometheus metrics."""
import prometheus_client as prom

SERVICE = "reward"

BATCH_SIZE = prom.Histogram("specrej_reward_batch_size", "Sequences in each forward pass of the reward model.",
                            ["service"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
SCORE_SECONDS = prom.Histogram("specrej_reward_score_seconds", "Time to score one request's responses.", ["service"],
                               buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
SEQUENCES = prom.Counter("specrej_reward_sequences_total", "Responses scored.", ["service"])
TOKENS = prom.Counter("specrej_reward_tokens_total", "Tokens read by the reward model.", ["service"])


def observe(scored, seconds: float) -> None:
    for size in scored.batch_sizes:
        BATCH_SIZE.labels(SERVICE).observe(size)
    SCORE_SECONDS.labels(SERVICE).observe(seconds)
    SEQUENCES.labels(SERVICE).inc(len(scored.scores))
    TOKENS.labels(SERVICE).inc(scored.tokens)


# Series at zero from start-up, so rate() counts the first request (see coordinator/metrics.py).
for _metric in (BATCH_SIZE, SCORE_SECONDS, SEQUENCES, TOKENS):
    _metric.labels(SERVICE)
