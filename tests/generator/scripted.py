"""Sessions driven from tests through a fixed script of commands, and waiting on the engine's
decode loop with a bound, so that a bug fails instead of hanging."""
import threading
import time

from generator_service.sampling import SamplingParams

WAIT = 240  # seconds any one engine answer may take on the tiny model (the first compiled step: ~75 s)

POEM = [{"role": "user", "content": "Write a short poem about rivers."}]
RECIPE = [{"role": "system", "content": "You are terse."},
          {"role": "user", "content": "Give me a recipe for bread, with quantities, and explain each step."}]
LONG = [{"role": "user", "content": " ".join(f"word{i}" for i in range(120)) + " Summarise."}]

# Each script: messages, n, max_new_tokens, sampling, then (until_tokens, keep-or-None) commands.
SCRIPTS = {
    "poem": (POEM, 12, 40, SamplingParams(seed=3), [(9, None), (0, [0, 5, 6, 11]), (20, None), (0, [5]), (0, None)]),
    "recipe": (RECIPE, 5, 25, SamplingParams(temperature=0.7, top_p=0.9, seed=8), [(4, None), (0, [1, 2]), (0, None)]),
    "long": (LONG, 40, 30, SamplingParams(top_k=50, seed=5), [(0, None)]),
}


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


def play(engine, name: str, began: threading.Barrier | None = None) -> list[list[int]]:
    """Run script `name` to the end; returns every sequence's tokens."""
    messages, n, max_new_tokens, sampling, commands = SCRIPTS[name]
    session = engine.open_session(messages, n=n, max_new_tokens=max_new_tokens, sampling=sampling,
                                  min_tokens_before_full=0)
    try:
        if began:
            began.wait(WAIT)
        session.start().result(WAIT)
        for until, keep in commands:
            if keep is None:
                session.advance(until).result(WAIT)
            else:
                session.prune([i for i in keep if not session.sequences[i].finish_reason]).result(WAIT)
        return [s.tokens for s in session.sequences]
    finally:
        close_and_wait(engine, session)


def play_together(engine, names: list[str]) -> dict[str, list[list[int]]]:
    """Run the scripts `names` at once, one thread each."""
    results, errors = {}, []
    barrier = threading.Barrier(len(names))

    def one(name):
        try:
            results[name] = play(engine, name, barrier)
        except Exception as error:  # reported below, in the caller's thread
            errors.append(error)

    threads = [threading.Thread(target=one, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(3 * WAIT)
    assert not errors, errors
    return results
