"""python -m bench.throughput.concurrent_sessions: what decoding sessions together buys, on the real model.

1. Eight sessions (n=8, 32 tokens each) opened at once against the same eight one after another:
   total wall time, and whether every session's tokens are the same both ways (they should be).
2. A small session (n=4, 16 tokens) started while a big one decodes, against the small one alone:
   its wall time from open to last token, and the big one's.
Takes about three minutes on a 2-core CPU with the default model."""
import argparse
import time

from bench.shared.figures import write_figures
from generator_service.engine import GeneratorEngine
from generator_service.sampling import SamplingParams

TOPICS = ["rivers", "bread", "the moon", "trains", "owls", "glaciers", "chess", "lighthouses"]


def messages(topic: str) -> list[dict]:
    return [{"role": "user", "content": f"Write a few sentences about {topic}."}]


def open_and_start(engine, topic: str, n: int, tokens: int, seed: int):
    session = engine.open_session(messages(topic), n=n, max_new_tokens=tokens, min_tokens_before_full=0,
                                  sampling=SamplingParams(temperature=1.0, top_p=0.95, seed=seed))
    return session, session.start()


def finish(session, started) -> list[list[int]]:
    started.result()
    session.advance(0).result()
    session.close()
    return [s.tokens for s in session.sequences]


def run_alone(engine, topic: str, n: int, tokens: int, seed: int) -> tuple[list[list[int]], float]:
    began = time.perf_counter()
    result = finish(*open_and_start(engine, topic, n, tokens, seed))
    return result, time.perf_counter() - began


def eight_sessions(engine, n: int, tokens: int) -> dict:
    began = time.perf_counter()
    alone = [run_alone(engine, topic, n, tokens, seed)[0] for seed, topic in enumerate(TOPICS)]
    sequential = time.perf_counter() - began
    began = time.perf_counter()
    opened = [open_and_start(engine, topic, n, tokens, seed) for seed, topic in enumerate(TOPICS)]
    # Every advance is asked for before any answer is awaited, so all eight decode together.
    advancing = []
    for session, started in opened:
        started.result()
        advancing.append(session.advance(0))
    for future in advancing:
        future.result()
    together = []
    for session, _ in opened:
        session.close()
        together.append([s.tokens for s in session.sequences])
    concurrent = time.perf_counter() - began
    print(f"8 sessions of n={n}, {tokens} tokens: one after another {sequential:.1f} s, together {concurrent:.1f} s "
          f"(x{sequential / concurrent:.2f}); same tokens both ways: {alone == together}")
    return {"sessions": 8, "n": n, "tokens": tokens, "one_after_another_s": sequential, "together_s": concurrent,
            "speedup": sequential / concurrent, "same_tokens": alone == together}


def small_beside_big(engine, big_n: int, big_tokens: int) -> dict:
    _, small_alone = run_alone(engine, "owls", 4, 16, 1)
    _, big_alone = run_alone(engine, "rivers", big_n, big_tokens, 2)
    began = time.perf_counter()
    big, big_started = open_and_start(engine, "rivers", big_n, big_tokens, 2)
    big_started.result()
    big_advance = big.advance(0)
    time.sleep(1.0)  # the big one is decoding
    _, small_beside = run_alone(engine, "owls", 4, 16, 1)
    big_still_decoding = not big_advance.done()
    big_advance.result()
    big.close()
    big_beside = time.perf_counter() - began
    print(f"small session (n=4, 16 tokens), open to last token: alone {small_alone:.2f} s, beside a big one "
          f"(n={big_n}, {big_tokens} tokens) {small_beside:.2f} s; answered while the big one still decoded: "
          f"{big_still_decoding}")
    print(f"big session: alone {big_alone:.1f} s, with the small one beside it {big_beside:.1f} s")
    return {"small": {"n": 4, "tokens": 16, "alone_s": small_alone, "beside_big_s": small_beside,
                      "answered_while_big_decoded": big_still_decoding},
            "big": {"n": big_n, "tokens": big_tokens, "alone_s": big_alone, "with_small_s": big_beside}}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput.concurrent_sessions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="unset = the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--big-n", type=int, default=32)
    parser.add_argument("--big-tokens", type=int, default=32)
    parser.add_argument("--out", default="bench/results", help="folder for concurrent_sessions.json")
    args = parser.parse_args(argv)
    engine = GeneratorEngine(args.model, device=args.device)
    try:
        run_alone(engine, "warm-up", 2, 4, 0)  # first calls pay for lazy initialisation
        figures = {"eight_sessions": eight_sessions(engine, 8, 32),
                   "small_beside_big": small_beside_big(engine, args.big_n, args.big_tokens)}
    finally:
        engine.shutdown()
    write_figures("bench.throughput.concurrent_sessions", figures, args.out)


if __name__ == "__main__":
    main()
