"""python -m bench.throughput.reward_sessions: what keeping candidates' keys/values between decision points saves
the reward service. One Speculative-Rejection-like request (n responses, scored at 4 decision points
as they grow to 32/64/128/256 tokens) through the scoring engine twice in the same process: once
within a session (each call reads only new tokens) and once recomputed from scratch at every call.
"""
import argparse
import time

from bench.shared.figures import write_figures
from common.models import choose_device, choose_dtype, resolve_model
from reward_service.engine import ScoringEngine
from reward_service.scorers import Item, load_scorer
from reward_service.sessions import SessionCache

MESSAGES = [{"role": "user", "content": "Explain how a reward model can rank partial answers."}]
SOURCE = ("A reward model reads a conversation and an answer and returns a number that says how good the "
          "answer is. Ranking partial answers works because early tokens already reveal much of an answer's "
          "direction: a confused opening rarely recovers, while a clear plan tends to stay clear. ")


def responses(tokenizer, n: int, tokens: int) -> list[list[int]]:
    """n different token sequences of `tokens` tokens (windows at different offsets of a long text)."""
    ids = tokenizer(SOURCE * (tokens // 20 + n), add_special_tokens=False).input_ids
    return [ids[7 * c : 7 * c + tokens] for c in range(n)]


def run(engine, tokenizer, bodies, lengths) -> dict[str, tuple[int, float]]:
    """Tokens read and seconds, recomputed and within a session; the two calls of a decision point run
    back to back, so a change in the machine's load falls on both alike."""
    totals = {"recomputed": [0, 0.0], "session": [0, 0.0]}
    kept = engine.open_session()
    for length in lengths:
        items = [Item(tokenizer.decode(body[:length]), False, c) for c, body in enumerate(bodies)]
        for way, session in (("recomputed", ""), ("session", kept)):
            began = time.perf_counter()
            totals[way][0] += engine.submit(MESSAGES, items, session=session).result().tokens
            totals[way][1] += time.perf_counter() - began
    engine.release(kept)
    return {way: (tokens, seconds) for way, (tokens, seconds) in totals.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput.reward_sessions", description=__doc__)
    parser.add_argument("--model", default=None, help="reward model; unset = the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--lengths", default="32,64,128,256", help="response tokens at each decision point")
    parser.add_argument("--out", default="bench/results", help="folder for reward_sessions.json")
    args = parser.parse_args(argv)
    device = choose_device(args.device)
    scorer = load_scorer("lm-logprob", resolve_model(args.model), device, choose_dtype(args.dtype, device), 8192)
    engine = ScoringEngine(scorer, sessions=SessionCache(8 << 30), batch_window_seconds=0)
    lengths = [int(x) for x in args.lengths.split(",")]
    bodies = responses(scorer.tokenizer, args.n, lengths[-1])
    run(engine, scorer.tokenizer, bodies, lengths[:1])  # warm-up
    measured = run(engine, scorer.tokenizer, bodies, lengths)
    engine.close()
    (full_tokens, full_seconds), (kept_tokens, kept_seconds) = measured["recomputed"], measured["session"]
    print(f"{scorer.name} on {device}/{scorer.dtype}, n={args.n}, decision points at {lengths} tokens")
    print(f"recomputed every call: {full_tokens} tokens read, {full_seconds:.2f} s")
    print(f"within a session:      {kept_tokens} tokens read, {kept_seconds:.2f} s")
    print(f"ratio: {full_tokens / kept_tokens:.2f}x fewer tokens, {full_seconds / kept_seconds:.2f}x less time")
    write_figures("bench.throughput.reward_sessions", {
        "scorer": scorer.name, "device": str(device), "n": args.n, "decision_points": lengths,
        "recomputed": {"tokens": full_tokens, "seconds": full_seconds},
        "session": {"tokens": kept_tokens, "seconds": kept_seconds},
        "tokens_ratio": full_tokens / kept_tokens, "time_ratio": full_seconds / kept_seconds}, args.out)


if __name__ == "__main__":
    main()
