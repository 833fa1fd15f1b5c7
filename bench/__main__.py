"""python -m bench: Speculative Rejection against Best-of-N, generator throughput against Hugging Face
generate(), and the cost of the gRPC path; writes results.json, results.md and PNG plots.

By default the generator engine and reward scorer run in this process; with --generator and
--reward the decoding runs go through those gRPC services instead.
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys

from bench.driver import DEFAULT_PARTS, PAIRED, PARTS, Options, run_bench
from bench.shared.config import PAIRED_PRESETS, PRESETS, parse_schedule
from bench.shared.prompts import DEFAULT_PROMPTS
from generator_service.decoder import DEFAULT_ROW_BLOCK
from reward_service.scorers import SCORERS
from common.flags import parse_bytes


def _list(kind):
    def parse(text: str):
        try:
            return tuple(kind(item) for item in text.split(",") if item.strip())
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return parse


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--preset", choices=sorted(PRESETS), default="full",
                        help="sizes of the experiment; full (the default) is meant for a GPU")
    preset.add_argument("--quick", action="store_const", const="quick", dest="preset",
                        help="same as --preset quick: a few minutes on a 2-core CPU")
    parser.add_argument("--out", default="bench/results", help="results folder [default bench/results]")
    parser.add_argument("--parts", type=_list(str), default=None,
                        help=f"comma-separated subset of {','.join(PARTS)} [default: {','.join(DEFAULT_PARTS)} in "
                             "process; efficiency over gRPC; paired with the paired presets]; or `load`: concurrent clients against the three services "
                             "started as processes on loopback (results in OUT/load/); or `fleet`: two replicas of "
                             "each model service behind one coordinator, restarted in turn under load (results in "
                             "OUT/fleet/); or `engines`: decoding tokens/s of the generator's vllm and native "
                             "backends, plain vLLM and Hugging Face generate() side by side (OUT/engines.json; "
                             "more options: python -m bench.throughput.engines --help)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--stop-after-minutes", type=float, default=None,
                        help="paired part: start no new run after this long and write the results of the pairs done; "
                             "every finished run is kept in OUT/paired-journal.jsonl, so the same command goes on "
                             "from there; 0 runs nothing and only reports the journal [default: run to the end]")

    where = parser.add_argument_group("where the engines are")
    where.add_argument("--in-process", action="store_true", help="engines in this process (the default)")
    where.add_argument("--generator", metavar="HOST:PORT", help="decode through this generator service")
    where.add_argument("--reward", metavar="HOST:PORT", help="score through this reward service")

    load = parser.add_argument_group("load (--parts load)")
    load.add_argument("--coordinator", metavar="HOST:PORT",
                      help="send the load to this running coordinator (loopback only) instead of starting the three "
                           "services")
    load.add_argument("--load-clients", type=_list(int), help="closed-loop client counts [default 1,4,8,16,32]")
    load.add_argument("--load-n", type=_list(int), help="n of the load's requests [default 8,32]")
    load.add_argument("--load-seconds", type=float, help="seconds per client count [default 20]")

    fleet = parser.add_argument_group("fleet (--parts fleet)")
    fleet.add_argument("--fleet-clients", type=int, help="closed-loop clients during the restarts [default 3]")
    fleet.add_argument("--fleet-settle-seconds", type=float,
                       help="seconds of load before the first restart and after each [default 10]")

    models = parser.add_argument_group("models (in process)")
    models.add_argument("--model", default=None, help="generator: Hugging Face folder or hub id [default: the "
                                                       "embedded SmolLM2-135M-Instruct]")
    models.add_argument("--reward-model", default=None, help="reward model [default: --model, i.e. the "
                                                              "generator's own likelihood]")
    models.add_argument("--reward-scorer", default="lm-logprob", choices=list(SCORERS),
                        help="lm-logprob: the reward model's own likelihood of the response; classifier: a "
                             "sequence-classification reward model; judge: the reward model (an instruct model) "
                             "asked whether the response is good, reward = log P(Yes) - log P(No) "
                             "[default: lm-logprob]")
    models.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
    models.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto")
    models.add_argument("--kv-cache-budget", type=parse_bytes, default=None,
                        help="the engine's own KV budget (schedule `memory`, pools, fixed intervals) [default: "
                             "free CUDA memory less 10%%, 2GiB on CPU]")
    models.add_argument("--row-block", type=int, default=DEFAULT_ROW_BLOCK, help="as the generator service's --row-block")
    models.add_argument("--token-budget", type=int, default=8192, help="as the reward service's --token-budget")

    sizes = parser.add_argument_group("experiment (overrides the preset)")
    sizes.add_argument("--prompts-file", default=str(DEFAULT_PROMPTS),
                       help="JSON list or JSON Lines of prompts (strings or objects with `prompt`) "
                            f"[default {DEFAULT_PROMPTS}]")
    sizes.add_argument("--prompts", type=int, help="how many prompts, from --first-prompt on")
    sizes.add_argument("--first-prompt", type=int,
                       help="position in the file of the first prompt (0 = the first): a later start holds out "
                            "prompts that earlier runs chose settings on")
    sizes.add_argument("--pool", type=int, dest="pool_size", help="complete samples per prompt for Best-of-N")
    sizes.add_argument("--pool-batch", type=int, help="most pool samples per generator session")
    sizes.add_argument("--n", type=_list(int), help="initial batch sizes of Speculative Rejection, e.g. 64,128")
    sizes.add_argument("--max-new-tokens", type=int)
    sizes.add_argument("--rejection-rates", type=_list(float), help="e.g. 0.5,0.7,0.9")
    sizes.add_argument("--adaptive-rates", type=_list(float),
                       help="paired part: least rejection rates of the adaptive rule, run on the first schedule "
                            "(empty string: none)")
    sizes.add_argument("--refill-rates", type=_list(float),
                       help="paired part: rejection rates run again with refill (the rows a decision point frees "
                            "get branches of the best survivors), on the first schedule (empty string: none)")
    sizes.add_argument("--schedules", type=_list(parse_schedule),
                       help="memory-B (KV budget of B response tokens), memory (the generator's budget), every-K, "
                            "double-K (decision points at K, 2K, 4K, ...)")
    sizes.add_argument("--seeds", type=int, help="runs per prompt and configuration")
    sizes.add_argument("--best-of-n", type=_list(int), help="live Best-of-N sizes, a check on the pool's curve")
    sizes.add_argument("--throughput-batch-sizes", type=_list(int))
    sizes.add_argument("--throughput-new-tokens", type=int)
    sizes.add_argument("--repeats", type=int, help="alternating measurements for throughput and gRPC overhead")
    sizes.add_argument("--temperature", type=float)
    sizes.add_argument("--top-p", type=float)
    sizes.add_argument("--top-k", type=int)
    args = parser.parse_args(argv)
    if args.in_process and (args.generator or args.reward):
        parser.error("--in-process cannot be combined with --generator/--reward")
    if bool(args.generator) != bool(args.reward):
        parser.error("--generator and --reward go together")
    return args


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    command = shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)])
    if args.parts == ("load",):
        from bench.load.load_run import run_load_part

        path = run_load_part(args, command)
        print(f"wrote {path}", file=sys.stderr)
        return None
    if args.parts == ("fleet",):
        from bench.load.fleet import run_fleet_part

        path = run_fleet_part(args, command)
        print(f"wrote {path}", file=sys.stderr)
        return None
    if args.parts == ("engines",):
        from bench.throughput.engines import run_engines_part

        run_engines_part(args, command)
        return None
    import transformers

    transformers.logging.set_verbosity_error()
    overrides = {name: getattr(args, name) for name in (
        "prompts", "first_prompt", "pool_size", "pool_batch", "n", "max_new_tokens", "rejection_rates", "adaptive_rates", "refill_rates",
        "schedules",
        "seeds",
        "best_of_n", "throughput_batch_sizes", "throughput_new_tokens", "repeats", "temperature", "top_p", "top_k")}
    config = PRESETS[args.preset].with_overrides(**overrides)
    parts = args.parts or ((PAIRED,) if args.preset in PAIRED_PRESETS else ("efficiency",) if args.generator
                           else DEFAULT_PARTS)
    options = Options(
        model=args.model, reward_model=args.reward_model, reward_scorer=args.reward_scorer, device=args.device,
        dtype=args.dtype, kv_cache_budget=args.kv_cache_budget, row_block=args.row_block,
        token_budget=args.token_budget, generator=args.generator, reward=args.reward,
        prompts_file=args.prompts_file, parts=tuple(parts), progress=not args.no_progress,
        command=command, preset=args.preset,
        stop_after_seconds=None if args.stop_after_minutes is None else 60 * args.stop_after_minutes,
    )
    results = run_bench(config, options, args.out)
    print(f"wrote {args.out}/results.md, results.json and plots", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
