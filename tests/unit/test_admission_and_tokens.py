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
    assert hint.seconds(queued=1, running=0, parallel=1) == 1.0  # nothing seen yet
    for _ in range(30):
        hint.observe(20.0)
    assert 19 < hint.seconds(queued=1, running=0, parallel=1) <= 20
    assert 39 < hint.seconds(queued=8, running=0, parallel=4) <= 40  # twice as much ahead as runs at once
    assert 49 < hint.seconds(queued=8, running=4, parallel=4) <= 50  # and what runs has half its time left
    assert hint.seconds(queued=100, running=0, parallel=1) == 60.0
    for _ in range(60):
        hint.observe(0.001)
    assert hint.seconds(queued=1, running=0, parallel=1) == 0.05


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

    assert 0.2 < asyncio.run(scenario()) < 1.0  # from 1 s at start towards the 0.3 s requests took


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
