"""One benchmark run, start to end: load what is needed, run the parts, write the results folder."""
from __future__ import annotations

import datetime
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.efficiency.experiment import jobs, run_efficiency
from bench.paired.experiment import JOURNAL_NAME, PairedResults, PairedRun, pairs_asked, pool_target
from bench.paired.experiment import jobs as paired_jobs
from bench.run_results import BenchResults
from bench.shared.config import EVERY, MEMORY, BenchConfig, Schedule
from bench.shared.journal import Journal
from bench.shared.prompts import Prompt, load_prompts
from bench.shared.requests import request, schedule_arguments
from generator_service.decoder import DEFAULT_ROW_BLOCK

EFFICIENCY, THROUGHPUT, OVERHEAD, PAIRED = "efficiency", "throughput", "overhead", "paired"
PARTS = (EFFICIENCY, THROUGHPUT, OVERHEAD, PAIRED)
DEFAULT_PARTS = (EFFICIENCY, THROUGHPUT, OVERHEAD)  # the paired part runs when asked for, or by its presets

SEEDS_NOTES = {
    EFFICIENCY: (
        "efficiency: pools use seeds 2^40 + chunk, runs use seeds 1..{seeds}: the generator's sampling is a pure "
        "function of (seed, sequence index, position), so no run re-samples the pool that estimates Best-of-N; all "
        "configurations share the run seeds (same initial candidates per prompt and seed), and each configuration's "
        "rewards are averaged over seeds before being placed on the prompt's Best-of-N curve"),
    PAIRED: (
        "paired: runs use seeds 1..{seeds}, a pair's SR and Best-of-n0 the same seed (the same n0 initial "
        "candidates); a prompt's pool holds the candidates of its Best-of-n0 runs at the largest n0, one run per "
        "seed, and fresh samples with seeds 2^40 + chunk, and each pair is placed on the curve of that pool without "
        "its own seed's candidates"),
}
SCHEDULES_NOTE = (
    "memory-B: memory-driven decision points with a KV budget of B response tokens beyond the shared prompt "
    "(first at B/n tokens, then wherever the survivors fill it again); memory: the generator's own budget; "
    "every-K: a decision point every K tokens; double-K: at K, 2K, 4K, ... tokens (the coordinator's default "
    "schedule); with every schedule a full KV cache forces a decision point too"
)


@dataclass
class Options:
    """Everything besides the experiment's sizes: models, devices, where the engines are."""

    model: str | None = None
    reward_model: str | None = None
    reward_scorer: str = "lm-logprob"
    device: str = "auto"
    dtype: str = "auto"
    kv_cache_budget: int | None = None
    row_block: int = DEFAULT_ROW_BLOCK
    token_budget: int = 8192
    generator: str | None = None  # gRPC addresses; both or neither
    reward: str | None = None
    prompts_file: str | Path = ""
    parts: tuple[str, ...] = DEFAULT_PARTS
    progress: bool = True
    command: str = ""
    preset: str = ""
    stop_after_seconds: float | None = None  # paired part: start no new run after this long (the journal resumes)
    extra: dict = field(default_factory=dict)

    @property
    def over_grpc(self) -> bool:
        return bool(self.generator)


def check(config: BenchConfig, options: Options) -> None:
    config.check()
    if bool(options.generator) != bool(options.reward):
        raise ValueError("--generator and --reward go together")
    unknown = set(options.parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    if options.over_grpc and (EFFICIENCY in options.parts or PAIRED in options.parts):
        budgeted = [s.name for s in config.schedules if s.kind == MEMORY and s.tokens]
        if budgeted:
            raise ValueError(f"schedules {budgeted} set a KV budget per run, which only the in-process engine "
                             "allows; over gRPC use `memory` (the generator service's --kv-cache-budget)")


def run_bench(config: BenchConfig, options: Options, out_dir: str | Path) -> BenchResults:
    check(config, options)
    began = time.perf_counter()
    prompts = load_prompts(options.prompts_file, config.prompts, config.first_prompt)
    parts = [p for p in PARTS if p in options.parts]
    remote_only = options.over_grpc and set(parts) <= {EFFICIENCY, PAIRED}
    local = None if remote_only else LocalModels(config, options)
    backend = _backend(options, local)
    description = _describe(backend, options, local)

    total = (jobs(config, len(prompts)) if EFFICIENCY in parts else 0) \
        + (paired_jobs(config, len(prompts)) if PAIRED in parts else 0) \
        + (2 * (len(config.throughput_batch_sizes) * config.repeats) if THROUGHPUT in parts else 0) \
        + (2 * config.repeats if OVERHEAD in parts else 0)
    from tqdm import tqdm

    results = BenchResults(runs=[], pools=[])
    with tqdm(total=total, unit="run", disable=not options.progress, file=sys.stderr, dynamic_ncols=True) as bar:
        def step(done: str) -> None:
            bar.set_postfix_str(done, refresh=False)
            bar.update()

        run_notes = {}
        try:
            if EFFICIENCY in parts:
                bar.set_description("efficiency")
                results.pools, results.runs = run_efficiency(backend, prompts, config, step)
            if PAIRED in parts:
                bar.set_description("paired")
                journal = Journal(Path(out_dir) / JOURNAL_NAME, _journal_settings(config, options, description))
                stop_at = None if options.stop_after_seconds is None else began + options.stop_after_seconds
                paired = PairedRun(backend, prompts, config, journal, step, stop_at).run()
                results.paired = PairedResults(
                    paired.pairs, list(paired.pools.values()), config.max_new_tokens,
                    kv_budget_bytes=description["generator KV budget (bytes)"],
                    kv_bytes_per_token=description["KV bytes per token"], pool_seeds=paired.pool_seeds)
                asked = pairs_asked(config, len(prompts))
                if options.stop_after_seconds == 0:
                    run_notes["paired runs"] = (
                        f"report only: this run re-read the journal {journal.path.name} and ran nothing "
                        f"(--stop-after-minutes 0); {len(paired.pairs)} pairs of the {asked} asked for{POOL_NOTE}; "
                        + _journal_span(journal))
                elif paired.complete:
                    run_notes["paired runs"] = f"{len(paired.pairs)} pairs, all asked for"
                else:
                    run_notes["paired runs"] = (
                        f"{len(paired.pairs)} pairs of the {asked} asked for{POOL_NOTE}: stopped by "
                        "--stop-after-minutes; the same command goes on from there")
            if THROUGHPUT in parts:
                bar.set_description("throughput")
                results.throughput = local.throughput(prompts[0], step)
            if OVERHEAD in parts:
                bar.set_description("gRPC overhead")
                # The shortest prompt: the transport's share of the time is largest on the shortest runs.
                shortest = min(prompts, key=lambda p: len(p.text))
                row, identical = local.overhead(shortest, backend if options.over_grpc else None, step)
                results.overhead = [row]
                run_notes["gRPC overhead: identical results both ways"] = identical
        finally:
            backend.close()

    results.metadata = _metadata(config, options, prompts, description, parts, time.perf_counter() - began)
    if PAIRED in parts and options.stop_after_seconds == 0:
        # Seconds to load the models and read the journal would read as the experiment's duration.
        del results.metadata["total wall seconds"]
    results.metadata.update(run_notes)
    write(results, out_dir)
    return results


# A journal may hold a prompt's groups before its pool: their pairs wait for the pool to be reported.
POOL_NOTE = " (a pair counts once its prompt's pool is journaled)"


def _journal_span(journal: Journal) -> str:
    """When the journal's units were written, as far as their lines say (lines of older runs carry no time)."""
    if not journal.times:
        return f"its {len(journal)} units carry no time (journaled before its lines were timestamped)"
    first, last = (datetime.datetime.fromisoformat(time).strftime("%Y-%m-%d %H:%M UTC")
                   for time in (min(journal.times), max(journal.times)))
    timed = "its units" if len(journal.times) >= len(journal) else f"{len(journal.times)} of its {len(journal)} units"
    return f"{timed} were journaled from {first} to {last}"


def _journal_settings(config: BenchConfig, options: Options, description: dict) -> dict:
    """What must not change between the runs whose units one journal holds (the service addresses may)."""
    return {**{key: value for key, value in description.items() if key != "backend"},
            "prompts file": Path(options.prompts_file).name, "max new tokens": config.max_new_tokens,
            "pool target": pool_target(config), "pool batch": config.pool_batch,
            "sampling": [config.temperature, config.top_p, config.top_k], "token budget": options.token_budget}


def write(results: BenchResults, out_dir: str | Path) -> list[Path]:
    from bench.plots import write_plots
    from bench.report import write_report

    return [*write_report(results, out_dir), *write_plots(results, out_dir)]


def _backend(options: Options, local: "LocalModels | None"):
    from bench.shared.ports import GrpcBackend

    if options.over_grpc:
        return GrpcBackend(options.generator, options.reward)
    return local.backend


class LocalModels:
    """The generator engine and reward scorer in this process, made once and reused by every run."""

    def __init__(self, config: BenchConfig, options: Options):
        from bench.shared.ports import InProcessBackend
        from common.models import resolve_model
        from generator_service.engine import GeneratorEngine
        from reward_service.scorers import load_scorer

        self.config, self.options = config, options
        largest = max(256, config.pool_batch, *config.n, *config.best_of_n, *config.throughput_batch_sizes)
        self.engine = GeneratorEngine(options.model, device=options.device, dtype=options.dtype,
                                      kv_cache_budget=options.kv_cache_budget, max_batch_size=largest,
                                      row_block=options.row_block)
        self.generator_path = resolve_model(options.model)
        self.reward_path = resolve_model(options.reward_model or options.model)
        self.scorer = load_scorer(options.reward_scorer, self.reward_path, self.engine.device, self.engine.dtype,
                                  options.token_budget)
        reward_name = options.reward_model or options.model or self.engine.model_name
        self.backend = InProcessBackend(self.engine, self.scorer, reward_name)

    def sampling(self, seed: int = 1):
        from generator_service.sampling import SamplingParams

        return SamplingParams(temperature=self.config.temperature, top_p=self.config.top_p, top_k=self.config.top_k,
                              seed=seed)

    def hf_model(self):
        """The generator as a Hugging Face model for generate(): the likelihood scorer's own model when
        it is the same one (it is, by default), else loaded."""
        from reward_service.scorers import LogprobScorer

        if isinstance(self.scorer, LogprobScorer) and self.reward_path == self.generator_path:
            return self.scorer.model
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.generator_path, dtype=self.engine.dtype) \
            .to(self.engine.device).eval()

    def throughput(self, prompt: Prompt, step):
        from bench.throughput.decoding import measure_throughput
        from common.chat import prompt_token_ids

        tokenizer = self.engine.tokenizer
        prompt_ids = prompt_token_ids(tokenizer, [{"role": "user", "content": prompt.text}])
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return measure_throughput(self.engine, self.hf_model(), prompt_ids, self.config.throughput_batch_sizes,
                                  self.config.throughput_new_tokens, self.config.repeats, self.sampling(), pad, step)

    def overhead(self, prompt: Prompt, remote, step):
        """The same Speculative Rejection request in process and over gRPC: through `remote` when
        given (the services of --generator/--reward), else through the real servicers wrapped around
        this process's own engine and scorer on loopback ports."""
        from bench.shared.ports import GrpcBackend, LoopbackServices
        from bench.throughput.decoding import measure_overhead
        from specrej.v1 import coordinator_pb2 as pb

        config = self.config
        n = config.n[0]
        alpha = 0.5 if 0.5 in config.rejection_rates else config.rejection_rates[0]
        schedule = next((s for s in config.schedules if s.kind == EVERY),
                        Schedule(EVERY, max(1, config.max_new_tokens // 4)))
        arguments = schedule_arguments(schedule, n)
        generate = request(prompt, config, method=pb.SPECULATIVE_REJECTION, n=n, seed=1, rejection_rate=alpha,
                           every_tokens=arguments["every_tokens"])
        label = f"SR n={n}, α={alpha:g}, {schedule}, {config.max_new_tokens} tokens, prompt {prompt.id}"
        run = lambda backend: backend.run(generate, memory_round_tokens=arguments["memory_round_tokens"])
        loopback = None
        if remote is None:
            loopback = LoopbackServices(self.engine, self.scorer, self.backend.reward_model)
            remote = GrpcBackend(loopback.generator_address, loopback.reward_address)
        try:
            return measure_overhead(self.backend, remote, label, run, config.repeats, step)
        finally:
            if loopback is not None:
                remote.close()
                loopback.stop()


def _describe(backend, options: Options, local: "LocalModels | None") -> dict:
    """Models, device and budgets of the engines the runs use (asked before any run: over gRPC this
    also checks that both services answer)."""
    description = backend.describe()
    if options.over_grpc and local is not None:
        description["local engine (throughput, overhead)"] = local.backend.describe()
    return description


def _metadata(config: BenchConfig, options: Options, prompts: list[Prompt], description: dict, parts,
              seconds: float) -> dict:
    import torch
    import transformers

    seeds = "; ".join(note.format(seeds=config.seeds) for part, note in SEEDS_NOTES.items() if part in parts)
    metadata = {
        "preset": options.preset or "custom",
        "command": options.command,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "parts": ", ".join(parts),
        **description,
    }
    metadata.update({
        "prompts": f"{len(prompts)} from {options.prompts_file} (ids {', '.join(p.id for p in prompts)})",
        "pool size": config.pool_size,
        "initial n": list(config.n),
        "max new tokens": config.max_new_tokens,
        "rejection rates": list(config.rejection_rates),
        "schedules": [s.name for s in config.schedules],
        "schedule names": SCHEDULES_NOTE,
        **({"seeds": seeds} if seeds else {}),
        "live Best-of-N sizes (a check on the pool curve)": list(config.best_of_n),
        "adaptive rule's least rates (paired part)": list(config.adaptive_rates),
        "rates run with refill (paired part)": list(config.refill_rates),
        "sampling": f"temperature {config.temperature:g}, top_p {config.top_p:g}, top_k {config.top_k}",
        "wall cost ratio": "Best-of-N's wall time at N is N x a pool sample's share of its batch's wall time; "
                           "batches of the pool size are more efficient per sample than Best-of-N at a smaller N, "
                           "so this favours Best-of-N",
        "throughput": f"{config.throughput_new_tokens} new tokens per row, prefill included, EOS ignored by both, "
                      f"{config.repeats} alternating measurements each",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"
                   + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
        "versions": f"torch {torch.__version__}, transformers {transformers.__version__}, Python {platform.python_version()}",
        "total wall seconds": round(seconds, 1),
    })
    metadata.update(options.extra)
    return metadata
