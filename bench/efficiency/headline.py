"""python -m bench.efficiency.headline: what a user gets, end to end, against plain vLLM Best-of-N.

The three services start as the README starts them (every flag at its default) on loopback. For each
AlpacaFarm prompt and seed, in alternating order:
- Speculative Rejection: one Generate call to the coordinator (n0 candidates, max_new_tokens, seed),
  timed at the client from the call to the answer;
- plain vLLM Best-of-n0: n0 requests of the prompt to a vLLM engine in this process, set up as the
  generator sets up its own (the same KV cache, prefix caching; on CPU whole prefills and, with
  --plain-cpu-threads, the generator's share of the cores), stopping at end of sequence, then one
  Score call with the n0 finished responses to the stack's reward service (as token ids where its
  tokenizer is the generator's, as the coordinator sends SR's, and a response scored as ended only
  when it ended on its own); the best is the highest score; timed from the first request to the scores.
With --stack-best-of-n, a third side: the stack's own Best-of-n0 (one Generate call with method
BEST_OF_N at the same n0, tokens and seed), whose generation time (the coordinator's generate_seconds)
is set against plain vLLM's: what serving Best-of-N through the stack costs over vLLM alone. It draws
the same candidates as SR from the same seed, so the summary also gives how often SR returned its very
response (with an exact interval) and how much sooner SR answered. That
side starts the coordinator with an hour's request limit (--drain-grace-seconds 3600): on a 2-core
CPU, Best-of-128 x 256 runs past its default 300 s, which is sized for a fleet's rolling restarts.
Both answers are scored by the same reward service, so the reward gap (SR's best minus Best-of-n0's
best) compares like with like. Intervals bootstrap over prompts (a prompt's seeds are not
independent draws); the time ratio is Best-of-n0's total seconds over SR's, and the scoring rate
is the reward service's tokens/s over vLLM's on Best-of-n0's own responses (its generation seconds
over its Score call's).
Each finished prompt and seed is appended to OUT/headline-journal.jsonl, so a run of hours can stop
at any point and the same command carries on where it stopped (a run with other settings refuses
the file); every one records the CPU's vector extensions, which set the engines' speed."""
import argparse
import asyncio
import json
import pathlib
import tempfile
import time

import numpy as np

from bench.shared import plain_vllm
from bench.shared.figures import vector_extensions, write_figures
from bench.shared.journal import Journal
from bench.shared.prompts import DEFAULT_PROMPTS, load_prompts
from bench.shared.scrape import metric_families
from bench.stats.binomial import clopper_pearson
from bench.stats.bootstrap import clustered_indices, mean_interval, ratio_of_sums_interval
from common.chat import prompt_token_ids
from common.local_stack import Stack
from common.models import resolve_model
from common.tokenizer_fingerprint import tokenizer_fingerprint


def engine_tokens(metrics_port: int) -> float:
    """Tokens the generator's engine has decoded (candidates running ahead included), from its /metrics."""
    family = next(f for f in metric_families(metrics_port) if f.name == "specrej_generator_tokens")
    return sum(s.value for s in family.samples if s.name == "specrej_generator_tokens_total")


def plain_backend(args):
    """The vLLM engine plain Best-of-N is sent to, set up as the generator sets up its own (the same
    KV cache, prefix caching, on CPU whole prefills and the generator's share of the cores), so that
    the two engines differ only in what is asked of them. vLLM's own CPU defaults (chunked prefill,
    its worker on every core) stalled for minutes on this benchmark's first Best-of-128 here."""
    from generator_service.vllm_backend import VllmBackend

    return VllmBackend(args.model, kv_cache_budget=args.kv_cache_bytes, max_batch_size=args.n,
                       cpu_threads=args.plain_cpu_threads)


async def run(args, plain=None) -> dict:
    """The pairs and their summary: the prompt-seeds the journal lacks are measured, then all are read
    back from it. `plain`: a vLLM AsyncLLM already started on args.model (else one is started here,
    after the services)."""
    prompts = load_prompts(args.prompts, args.prompt_count, args.first_prompt)
    journal = Journal(pathlib.Path(args.out) / "headline-journal.jsonl", {
        "model": args.model, "prompts": args.prompts, "n": args.n, "max_new_tokens": args.max_new_tokens,
        "kv_cache_bytes": args.kv_cache_bytes, "plain_cpu_threads": args.plain_cpu_threads,
        "stack_best_of_n": args.stack_best_of_n})
    # A turn's number sets the order of its sides, so a run carried on in several sittings keeps it.
    turns = list(enumerate((p, s) for p in prompts for s in args.seeds))
    todo = [(turn, prompt, seed) for turn, (prompt, seed) in turns if journal.get(f"{prompt.id}/{seed}") is None]
    if todo:
        await measure(args, todo, journal, plain)
    return summarize(args, [journal.get(f"{prompt.id}/{seed}") for _, (prompt, seed) in turns])


async def measure(args, todo: list, journal: Journal, plain=None) -> None:
    """Each (turn, prompt, seed) of `todo` measured on every side, in turn, into the journal."""
    import grpc

    from specrej.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc, reward_pb2, reward_pb2_grpc
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.model))
    eos = {tokenizer.eos_token_id}
    fingerprint = tokenizer_fingerprint(tokenizer)
    logs = pathlib.Path(tempfile.mkdtemp(prefix="specrej-headline-"))
    model_args = ("--model", args.model) if args.model else ()
    coordinator_args = ("--drain-grace-seconds", "3600") if args.stack_best_of_n else ()
    with Stack(logs, generator_args=model_args, reward_args=model_args, coordinator_args=coordinator_args) as stack:
        reward = reward_pb2_grpc.RewardStub(grpc.insecure_channel(stack.reward.address))
        by_token_ids = reward.Info(reward_pb2.RewardInfoRequest(), timeout=60).tokenizer == fingerprint
        coordinator = coordinator_pb2_grpc.CoordinatorStub(stack.channel)
        owned = None if plain is not None else plain_backend(args)
        engine = plain or owned.engine
        try:
            for turn, prompt, seed in todo:
                prompt_ids = prompt_token_ids(tokenizer, [{"role": "user", "content": prompt.text}])

                async def through_the_stack(method):
                    tokens_before = engine_tokens(stack.generator.metrics_port)
                    began = time.perf_counter()
                    answer = await asyncio.to_thread(
                        coordinator.Generate, coordinator_pb2.GenerateRequest(
                            prompt=prompt.text, n=args.n, max_new_tokens=args.max_new_tokens, seed=seed,
                            method=method), timeout=3600)
                    seconds = time.perf_counter() - began
                    await asyncio.sleep(1)  # candidates aborted at the end report their last tokens
                    return {"seconds": seconds, "generate_seconds": answer.stats.generate_seconds,
                            "score_seconds": answer.stats.score_seconds, "score": answer.best.score,
                            "decoded": answer.stats.generated_tokens,
                            "engine_decoded": engine_tokens(stack.generator.metrics_port) - tokens_before,
                            "text": answer.best.text}

                async def best_of_n():
                    began = time.perf_counter()
                    rows = await plain_vllm.sample(engine, prompt_ids, args.n, args.max_new_tokens, f"bon-{turn}")
                    generated = time.perf_counter() - began
                    bodies = [[t for t in row if t not in eos] for row in rows]
                    texts = [tokenizer.decode(body, skip_special_tokens=True) for body in bodies]
                    scored = await asyncio.to_thread(reward.Score, reward_pb2.ScoreRequest(
                        messages=[common_pb2.Message(role="user", content=prompt.text)],
                        tokenizer=fingerprint if by_token_ids else "",
                        items=[reward_pb2.ScoreItem(response=text, token_ids=body if by_token_ids else [],
                                                    complete=bool(row) and row[-1] in eos)
                               for text, body, row in zip(texts, bodies, rows)]), timeout=3600)
                    best = max(range(len(texts)), key=lambda i: scored.scores[i])
                    return {"seconds": time.perf_counter() - began, "generate_seconds": generated,
                            "score": scored.scores[best], "decoded": sum(len(r) for r in rows), "text": texts[best],
                            "scored_as": "token ids" if by_token_ids else "text"}

                sides = {"sr": lambda: through_the_stack(coordinator_pb2.SPECULATIVE_REJECTION), "bon": best_of_n}
                if args.stack_best_of_n:
                    sides["stack_bon"] = lambda: through_the_stack(coordinator_pb2.BEST_OF_N)
                names = list(sides)
                # Each side takes each place in turn, so a drift in the machine's speed falls on all alike.
                order = names[turn % len(names):] + names[:turn % len(names)]
                result = {"prompt": prompt.id, "seed": seed, "order": order, "vector_extensions": vector_extensions()}
                for side in order:
                    result[side] = await sides[side]()
                journal.put(f"{prompt.id}/{seed}", result)
                print(f"prompt {prompt.id} seed {seed}: SR {result['sr']['seconds']:.1f} s "
                      f"(score {result['sr']['score']:.4f}, {result['sr']['decoded']} tokens reported, "
                      f"{result['sr']['engine_decoded']:.0f} decoded by the engine), Best-of-{args.n} "
                      f"{result['bon']['seconds']:.1f} s (generate {result['bon']['generate_seconds']:.1f} s, score "
                      f"{result['bon']['score']:.4f}, {result['bon']['decoded']} tokens)"
                      + (f"; the stack's Best-of-{args.n} {result['stack_bon']['seconds']:.1f} s (generate "
                         f"{result['stack_bon']['generate_seconds']:.1f} s)" if "stack_bon" in result else ""),
                      flush=True)
        finally:
            if owned is not None:
                owned.shutdown()


def summarize(args, pairs: list[dict]) -> dict:
    """The ratios and the reward gap over `pairs`, with intervals that resample prompts."""
    indices = clustered_indices([p["prompt"] for p in pairs])
    speedup = ratio_of_sums_interval([p["bon"]["seconds"] for p in pairs], [p["sr"]["seconds"] for p in pairs], indices)
    generate_only = ratio_of_sums_interval([p["bon"]["generate_seconds"] for p in pairs],
                                           [p["sr"]["seconds"] for p in pairs], indices)
    gap = mean_interval([p["sr"]["score"] - p["bon"]["score"] for p in pairs], indices)
    # Best-of-N's scoring reads the very tokens its generation wrote, so the ratio of the two times is
    # the ratio of the reward service's rate to vLLM's in tokens/s.
    scoring_rate = ratio_of_sums_interval([p["bon"]["generate_seconds"] for p in pairs],
                                          [p["bon"]["seconds"] - p["bon"]["generate_seconds"] for p in pairs], indices)
    decoded = ratio_of_sums_interval([p["bon"]["decoded"] for p in pairs], [p["sr"]["decoded"] for p in pairs], indices)
    engine_decoded = ratio_of_sums_interval([p["bon"]["decoded"] for p in pairs],
                                            [p["sr"]["engine_decoded"] for p in pairs], indices)
    summary = {"prompts": len({p["prompt"] for p in pairs}), "seeds": list(args.seeds), "n": args.n,
               "max_new_tokens": args.max_new_tokens,
               "vector_extensions_of_pairs": sorted({p.get("vector_extensions", "unknown") for p in pairs}),
               "best_of_n_plus_scoring_over_sr_seconds": speedup.__dict__,
               "best_of_n_generation_alone_over_sr_seconds": generate_only.__dict__,
               "scoring_rate_over_plain_vllm_generation_rate": scoring_rate.__dict__,
               "reward_gap_sr_minus_best_of_n": gap.__dict__, "decoded_tokens_best_of_n_over_sr": decoded.__dict__,
               "decoded_tokens_best_of_n_over_sr_engine": engine_decoded.__dict__}
    if args.stack_best_of_n:
        summary["stack_best_of_n_generation_over_plain_vllm_generation"] = ratio_of_sums_interval(
            [p["stack_bon"]["generate_seconds"] for p in pairs], [p["bon"]["generate_seconds"] for p in pairs],
            indices).__dict__
        summary["stack_best_of_n_over_plain_vllm_best_of_n_plus_scoring_seconds"] = ratio_of_sums_interval(
            [p["stack_bon"]["seconds"] for p in pairs], [p["bon"]["seconds"] for p in pairs], indices).__dict__
        # The stack's two methods draw the same candidates from one seed, so here, unlike against plain
        # vLLM, "the same choice" is measurable: SR returning Best-of-N's very response.
        summary["stack_best_of_n_over_sr_seconds"] = ratio_of_sums_interval(
            [p["stack_bon"]["seconds"] for p in pairs], [p["sr"]["seconds"] for p in pairs], indices).__dict__
        same = sum(p["sr"]["text"] == p["stack_bon"]["text"] for p in pairs)
        summary["sr_same_response_as_stack_best_of_n"] = {
            "pairs": len(pairs), "same": same, "exact_interval": clopper_pearson(same, len(pairs)).__dict__}
        summary["reward_gap_sr_minus_stack_best_of_n"] = mean_interval(
            [p["sr"]["score"] - p["stack_bon"]["score"] for p in pairs], indices).__dict__
        summary["reward_gap_stack_best_of_n_minus_best_of_n"] = mean_interval(
            [p["stack_bon"]["score"] - p["bon"]["score"] for p in pairs], indices).__dict__
        # The stack seeds candidate i of seed s from (s, i) whatever the prompt, while plain vLLM's are
        # unseeded, so one seed's prompts may share noise that resampling prompts does not see (a check
        # found that coupling weak). Each seed's own mean shows whether one seed carries a gap.
        summary["reward_gap_by_seed"] = {
            str(seed): {side: float(np.mean([p[side]["score"] - p["bon"]["score"] for p in pairs if p["seed"] == seed]))
                        for side in ("sr", "stack_bon")}
            for seed in sorted({p["seed"] for p in pairs})}
    print(json.dumps(summary, indent=1))
    return {**summary, "pairs": pairs}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.efficiency.headline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None,
                        help="the model of both services and of plain vLLM [default: the embedded SmolLM2-135M-Instruct]")
    parser.add_argument("--prompts", default=str(DEFAULT_PROMPTS))
    parser.add_argument("--first-prompt", type=int, default=0)
    parser.add_argument("--prompt-count", type=int, default=10)
    parser.add_argument("--seeds", type=lambda text: [int(s) for s in text.split(",")], default=[0, 1, 2])
    parser.add_argument("--n", type=int, default=128, help="n0 of both sides [default 128]")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--kv-cache-bytes", type=int, default=2 * 1024**3,
                        help="plain vLLM's KV cache, the generator's default budget [default 2 GiB]")
    parser.add_argument("--plain-cpu-threads", default="auto",
                        help="cores plain vLLM's model worker is bound to on CPU, as the generator's --cpu-threads "
                             "[default auto = the generator's own share, half the cores]")
    parser.add_argument("--stack-best-of-n", action="store_true",
                        help="also time the stack's own Best-of-n0 (method BEST_OF_N) against plain vLLM's")
    parser.add_argument("--out", default="bench/results")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    write_figures("bench.efficiency.headline", asyncio.run(run(args)), args.out)


if __name__ == "__main__":
    main()
