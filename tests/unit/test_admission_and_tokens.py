"""The coordinator's admission queue and the bearer-token file, without a server."""
import asyncio
import os

import pytest

from common.auth import TokenFile
from common.errors import Overloaded
from common.retry_hint import RetryHint
from coordinator.admission import Admission


def test_requests_beyond_the_running_and_waiting_limits_are_turned_away_at_once():
    async def scenario():
        admission = Admission(max_concurrent=1, max_queued=1, service="coordinator-test")
        order, release_first = [], asyncio.Event()

        async def request(name, hold=None):
            async with admission.slot():
                order.append(name)
                if hold:
                    await hold.wait()

        first = asyncio.create_task(request("first", release_first))
        await asyncio.sleep(0)
        second = asyncio.create_task(request("second"))
        await asyncio.sleep(0)
        assert admission.waiting == 1
        with pytest.raises(Overloaded) as refused:
            await request("third")
        release_first.set()
        await asyncio.gather(first, second)
        return order, refused.value

    order, refused = asyncio.run(scenario())
    assert order == ["first", "second"]
    assert refused.retry_after_seconds > 0 and "busy" in refused.message


def test_the_retry_hint_follows_how_long_recent_work_took_and_what_waits_ahead():
    hint = RetryHint(initial_seconds=1.0, floor_seconds=0.05, ceiling_seconds=60.0)
    assert hint.seconds(queued=1, running=0, pieces=1, parallel=1) == 1.0  # nothing seen yet
    for _ in range(30):
        hint.observe(20.0, size=10)
    assert hint.seconds(queued=1, running=0, pieces=1, parallel=1) == pytest.approx(2)  # 2 s per unit of work
    # Spread over 4 servers, and the piece that starts last runs alone for about its length.
    assert hint.seconds(queued=80, running=0, pieces=8, parallel=4) == pytest.approx(2 * (80 / 4 + 10 * 3 / 4))
    # What is being served has half of it left.
    assert hint.seconds(queued=40, running=20, pieces=6, parallel=4) == pytest.approx(2 * ((40 + 10) / 4 + 10 * 3 / 4))
    assert hint.seconds(queued=100, running=0, pieces=10, parallel=1) == 60.0
    for _ in range(60):
        hint.observe(0.001)
    assert hint.seconds(queued=1, running=0, pieces=1, parallel=1) == 0.05


def drain_after_flood(sizes: list[int], parallel: int, refused_at: int) -> tuple[float, float]:
    """A synthetic clock: requests of `sizes` (each takes 0.1 s per unit) arrive at once and are
    served `parallel` at a time, in order. When `refused_at` of them have finished, a caller is
    refused. Returns its hint and the true time from then until the queue has drained."""
    hint = RetryHint(ceiling_seconds=1e9)
    free_at = [0.0] * parallel  # when each server is next free
    spans = []
    for size in sizes:
        server = min(range(parallel), key=free_at.__getitem__)
        spans.append((free_at[server], free_at[server] + 0.1 * size, size))
        free_at[server] += 0.1 * size
    spans.sort(key=lambda span: span[1])
    now = spans[refused_at - 1][1]
    for start, end, size in spans[:refused_at]:
        hint.observe(end - start, size)
    running = [size for start, end, size in spans if start <= now < end]
    queued = [size for start, end, size in spans if start > now]
    return (hint.seconds(queued=sum(queued), running=sum(running), pieces=len(queued) + len(running),
                         parallel=parallel), spans[-1][1] - now)


@pytest.mark.parametrize("parallel", [4, 32])
def test_the_retry_hint_is_within_half_again_of_the_time_a_mixed_queue_takes_to_drain(parallel):
    sizes = [(8, 32, 16, 64)[i % 4] * 24 for i in range(128)]  # n x max_new_tokens of a mixed flood
    for refused_at in (parallel, 32, 64, 96):
        hint, drain = drain_after_flood(sizes, parallel, refused_at)
        assert drain / 1.5 <= hint <= drain * 1.5, (refused_at, hint, drain)


def test_a_busy_coordinator_asks_callers_to_wait_about_as_long_as_its_requests_take():
    async def scenario():
        admission = Admission(max_concurrent=1, max_queued=0, service="coordinator-test")
        for _ in range(3):
            async with admission.slot():
                await asyncio.sleep(0.3)
        async with admission.slot():
            with pytest.raises(Overloaded) as refused:
                async with admission.slot():
                    pass
        return refused.value.retry_after_seconds

    # The one request running has on average half of the 0.3 s its predecessors took left.
    assert asyncio.run(scenario()) == pytest.approx(0.15, rel=0.3)


def test_a_waiter_that_gives_up_leaves_the_queue():
    async def scenario():
        admission = Admission(max_concurrent=1, max_queued=1, service="coordinator-test")
        async with admission.slot():
            waiter = asyncio.create_task(admission.slot().__aenter__())
            await asyncio.sleep(0)
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)
            assert admission.waiting == 0
        async with admission.slot():  # the slot was given back, not lost to the cancelled waiter
            return True

    assert asyncio.run(asyncio.wait_for(scenario(), 5))


def test_the_token_file_is_read_again_when_it_changes(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("# clients\nfirst-token\n\n")
    tokens = TokenFile(str(path))
    assert tokens.allows("Bearer first-token") and tokens.allows("bearer  first-token ")
    assert not tokens.allows("Bearer second-token") and not tokens.allows("first-token")
    assert not tokens.allows("Bearer # clients") and not tokens.allows("Bearer ")
    path.write_text("second-token\n")
    later = os.stat(path).st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(later, later))
    assert tokens.allows("Bearer second-token") and not tokens.allows("Bearer first-token")


def test_an_empty_token_file_stops_the_service_at_start(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("\n# nothing yet\n")
    with pytest.raises(SystemExit, match="no tokens"):
        TokenFile(str(path))
