"""Waiting on the engine's decode loop from tests, with a bound so that a bug fails instead of hanging."""
import time

WAIT = 60  # seconds any one engine answer may take on the tiny model


def wait_until(condition, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not come true in time")
        time.sleep(0.005)


def close_and_wait(engine, *sessions) -> None:
    """Close `sessions` and wait until the loop has freed them."""
    for session in sessions:
        session.close()
    wait_until(lambda: not set(sessions) & set(engine.sessions))
