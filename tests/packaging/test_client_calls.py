"""specrej.Client against real gRPC servers on loopback that answer as scripted: retries, backoff,
the server's pushback, deadlines, errors with their bad fields, request ids, the bearer token,
streams and their cancellation."""
import pickle
import time

import grpc
import pytest

from specrej import Client, FieldViolation, ServiceError
from specrej.v1 import coordinator_pb2 as pb

from .scripted_coordinator import OK, Outcome

UNAVAILABLE = Outcome(grpc.StatusCode.UNAVAILABLE, "generator: connection refused")


def busy(pushback_ms: str) -> Outcome:
    return Outcome(grpc.StatusCode.RESOURCE_EXHAUSTED, "generator: too many sessions",
                   trailing_metadata=(("grpc-retry-pushback-ms", pushback_ms),))


def gaps(servicer) -> list[float]:
    times = [call.at for call in servicer.calls]
    return [later - earlier for earlier, later in zip(times, times[1:])]


def test_unavailable_twice_then_ok_is_answered_after_growing_waits(scripted):
    servicer, target = scripted([UNAVAILABLE, UNAVAILABLE, OK])
    with Client(target, backoff_seconds=0.2, timeout=10) as client:
        response = client.generate("Name a colour.", n=4)
        assert client.last_request_id == "request-3"
    assert response.best.text == "answer to Name a colour." and response.stats.initial_n == 4
    assert len(servicer.calls) == 3
    first, second = gaps(servicer)
    # Jittered exponential backoff: half to all of 0.2 s, then of 0.4 s.
    assert 0.1 <= first < 1.0 and 0.2 <= second < 1.5


def test_resource_exhausted_waits_as_long_as_the_server_asks(scripted):
    servicer, target = scripted([busy("700"), OK])
    with Client(target, backoff_seconds=0.01, timeout=10) as client:
        assert client.generate("Name a colour.").best.text
    assert len(servicer.calls) == 2
    assert 0.7 <= gaps(servicer)[0] < 2.0


def test_negative_pushback_means_do_not_retry(scripted):
    servicer, target = scripted([busy("-1"), OK])
    with Client(target, backoff_seconds=0.01) as client, pytest.raises(ServiceError) as failure:
        client.generate("Name a colour.")
    assert failure.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(servicer.calls) == 1


def test_retries_end_after_the_configured_number_with_the_last_error(scripted):
    servicer, target = scripted([UNAVAILABLE])
    with Client(target, retries=2, backoff_seconds=0.01) as client:
        with pytest.raises(ServiceError) as failure:
            client.generate("Name a colour.")
        assert client.last_request_id == "request-3"
    assert len(servicer.calls) == 3
    error = failure.value
    assert (error.code, error.message, error.request_id) == (grpc.StatusCode.UNAVAILABLE,
                                                             "generator: connection refused", "request-3")
    assert "UNAVAILABLE: generator: connection refused (request id request-3)" == str(error)


def test_a_wait_past_the_deadline_is_not_taken(scripted):
    servicer, target = scripted([busy("5000")])
    started = time.monotonic()
    with Client(target, timeout=1.0) as client, pytest.raises(ServiceError) as failure:
        client.generate("Name a colour.")
    assert time.monotonic() - started < 1.0
    assert failure.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and len(servicer.calls) == 1


def test_the_deadline_covers_a_slow_call(scripted):
    servicer, target = scripted([Outcome(stall_seconds=5)])
    started = time.monotonic()
    with Client(target, timeout=0.5) as client, pytest.raises(ServiceError) as failure:
        list(client.stream("Name a colour."))
    assert failure.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2.0


def test_invalid_argument_is_not_retried_and_names_the_bad_fields(scripted):
    message = "n: 500 candidates do not fit: at most 64"
    servicer, target = scripted([Outcome(grpc.StatusCode.INVALID_ARGUMENT, message,
                                         field_violations=(("n", "500 candidates do not fit: at most 64"),))])
    with Client(target) as client, pytest.raises(ServiceError) as failure:
        client.generate("Name a colour.", n=500)
    error = failure.value
    assert (error.code, error.message, error.request_id) == (grpc.StatusCode.INVALID_ARGUMENT, message, "request-1")
    assert error.field_violations == (FieldViolation("n", "500 candidates do not fit: at most 64"),)
    assert len(servicer.calls) == 1
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.code, copy.field_violations, str(copy)) == (error.code, error.field_violations, str(error))


def test_token_travels_as_bearer_authorization(scripted):
    servicer, target = scripted([OK])
    with Client(target, token="s3cret") as client:
        client.generate("Name a colour.")
    with Client(target) as client:
        client.generate("Name a colour.")
    assert servicer.calls[0].metadata["authorization"] == "Bearer s3cret"
    assert "authorization" not in servicer.calls[1].metadata


def test_request_fields_reach_the_server(scripted):
    servicer, target = scripted([OK])
    with Client(target) as client:
        client.generate(messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                        n=8, method="BEST_OF_N", max_new_tokens=32, seed=7, rejection_rate=None)
        client.generate("Hi", method=pb.SPECULATIVE_REJECTION, rejection_rate=0.0)
        with pytest.raises(ValueError, match="prompt and messages"):
            client.generate("Hi", messages=[{"role": "user", "content": "Hi"}])
    first, second = (call.request for call in servicer.calls)
    assert [(m.role, m.content) for m in first.messages] == [("system", "Be brief."), ("user", "Hi")]
    assert (first.n, first.method, first.max_new_tokens, first.seed) == (8, pb.BEST_OF_N, 32, 7)
    assert not first.HasField("rejection_rate")
    assert second.HasField("rejection_rate") and second.rejection_rate == 0.0


def test_stream_is_retried_before_its_first_event(scripted):
    servicer, target = scripted([UNAVAILABLE, OK])
    with Client(target, backoff_seconds=0.01) as client:
        events = list(client.stream("Name a colour."))
        assert client.last_request_id == "request-2"
    assert [event.WhichOneof("event") for event in events] == ["round", "result"]
    assert events[-1].result.best.text == "answer to Name a colour."
    assert len(servicer.calls) == 2


def test_stream_that_fails_after_an_event_is_not_repeated(scripted):
    servicer, target = scripted([Outcome(grpc.StatusCode.UNAVAILABLE, "reward: connection lost", after_round=True), OK])
    received = []
    with Client(target, backoff_seconds=0.01) as client, pytest.raises(ServiceError) as failure:
        for event in client.stream("Name a colour."):
            received.append(event.WhichOneof("event"))
    assert received == ["round"]
    assert failure.value.code == grpc.StatusCode.UNAVAILABLE and failure.value.request_id == "request-1"
    assert len(servicer.calls) == 1


def test_leaving_a_stream_early_cancels_the_request_on_the_server(scripted):
    servicer, target = scripted([Outcome(stall_seconds=30)])
    with Client(target) as client:
        for event in client.stream("Name a colour."):
            assert event.HasField("round")
            break
        assert servicer.calls[0].cancelled.wait(5)
