"""What the tests read from the services the way an operator would: request log lines and /metrics."""
import json
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families


def assert_same_answer(answer, expected) -> None:
    """Two GenerateResponses hold the same candidates, text for text, in the same order. Their
    scores agree to float rounding only: when the scoring rounds fall at other tokens, the reward
    model reads each response's tokens in other pieces, whose float sums differ in the last bits."""
    def without_scores(candidates):
        return [(c.index, c.text, c.num_tokens, c.finish_reason) for c in candidates]

    assert without_scores([answer.best, *answer.ranked]) == without_scores([expected.best, *expected.ranked])
    assert [c.score for c in answer.ranked] == pytest.approx([c.score for c in expected.ranked], rel=1e-5)


def request_lines(log_text: str, request_id: str | None = None) -> list[dict]:
    """The JSON request-log lines of a service's log, those of `request_id` when given."""
    lines = []
    for line in log_text.splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("logger") == "specrej.requests" and request_id in (None, entry.get("request_id")):
                lines.append(entry)
    return lines


def scrape(service, host: str = "127.0.0.1") -> dict:
    """{(metric sample name, frozenset of labels): value} from a service's /metrics."""
    with urllib.request.urlopen(f"http://{host}:{service.metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def metric(samples: dict, name: str, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(value for (sample, sample_labels), value in samples.items() if sample == name and wanted <= sample_labels)
