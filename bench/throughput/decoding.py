"""Decoding throughput of our engine against Hugging Face `generate()` on the same model, and the
wall-time overhead of the gRPC path against the same engines in process.

Both are ratios measured in one run, with the two sides alternated (A B, B A, ...) so that noise
from a shared machine falls on both alike.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from bench.shared.records import OverheadRow, ThroughputRow
from generator_service.sampling import SamplingParams

_WARM_UP = (2, 4)  # batch size, new tokens: first calls pay for lazy initialisation


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class EngineRun:
    seconds: float
    decode_step_seconds: float  # mean over the run's steps, all rows present
    prune_seconds: float  # dropping half the rows afterwards
    kv_bytes_before_prune: int
    kv_bytes_after_prune: int
    sequences: tuple[list[int], ...] = ()  # each row's tokens


def engine_run(engine, prompt_ids: list[int], batch_size: int, new_tokens: int, sampling: SamplingParams) -> EngineRun:
    """Prefill once, then decode `new_tokens` for each of `batch_size` rows with our engine; then
    prune half the rows (timed apart from the decoding).

    End of sequence is ignored (no EOS ids), as `min_new_tokens` does for generate(), so both decode
    exactly batch_size * new_tokens tokens; the KV budget fits them all, so no row is ever dropped."""
    # One token of room beyond the run, so the rows are still running (prunable) when it ends.
    limit = new_tokens + 1
    request = engine.plan(prompt_ids, n=batch_size, max_new_tokens=limit, sampling=sampling,
                          min_tokens_before_full=limit, kv_budget_tokens=batch_size * limit, stop_at_eos=False)
    session = engine.admit(request)
    try:
        began = time.perf_counter()
        session.start().result()
        advanced = session.advance(new_tokens).result()
        _synchronize(engine.device)
        seconds = time.perf_counter() - began
        sequences = tuple(list(sequence.tokens) for sequence in session.sequences)
        decoded = sum(len(tokens) for tokens in sequences)
        before = advanced.kv_cache_bytes
        pruned = session.prune(list(range(0, batch_size, 2))).result()
        _synchronize(engine.device)
        prune_seconds, after = pruned.prune_seconds, pruned.kv_cache_bytes
    finally:
        session.close()
    if decoded != batch_size * new_tokens:
        raise RuntimeError(f"the engine decoded {decoded} tokens, not {batch_size} x {new_tokens}")
    step = sum(advanced.step_seconds) / max(len(advanced.step_seconds), 1)
    return EngineRun(seconds, step, prune_seconds, before, after, sequences)


@torch.inference_mode()
def generate_seconds(model, prompt_ids: list[int], batch_size: int, new_tokens: int, sampling: SamplingParams,
                     pad_token_id: int) -> float:
    """Hugging Face generate() with the prompt repeated batch_size times (it prefills every copy)."""
    ids = torch.tensor([prompt_ids], device=model.device).repeat(batch_size, 1)
    began = time.perf_counter()
    output = model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, max_new_tokens=new_tokens,
        min_new_tokens=new_tokens, temperature=sampling.temperature or 1.0, top_p=sampling.top_p, top_k=sampling.top_k,
        pad_token_id=pad_token_id,
    )
    _synchronize(model.device)
    seconds = time.perf_counter() - began
    if output.shape[1] - ids.shape[1] != new_tokens:
        raise RuntimeError(f"generate() returned {output.shape[1] - ids.shape[1]} new tokens, not {new_tokens}")
    return seconds


def measure_throughput(engine, model, prompt_ids: list[int], batch_sizes: Sequence[int], new_tokens: int,
                       repeats: int, sampling: SamplingParams, pad_token_id: int,
                       step: Callable[[str], None] = lambda _: None) -> list[ThroughputRow]:
    """Tokens per second (batch size x new tokens over wall seconds, prefill included) of both, at
    each batch size; `repeats` alternating measurements of each, pooled as total tokens / total time."""
    engine_run(engine, prompt_ids, *_WARM_UP, sampling)
    generate_seconds(model, prompt_ids, *_WARM_UP, sampling, pad_token_id)
    rows = []
    for batch_size in batch_sizes:
        ours, theirs = [], []
        sides = [
            ("engine", lambda: ours.append(engine_run(engine, prompt_ids, batch_size, new_tokens, sampling))),
            ("generate()", lambda: theirs.append(
                generate_seconds(model, prompt_ids, batch_size, new_tokens, sampling, pad_token_id))),
        ]
        for repeat in range(repeats):
            for name, measure in sides if repeat % 2 == 0 else sides[::-1]:
                measure()
                step(f"throughput: {name} at batch {batch_size}")
        tokens = batch_size * new_tokens * repeats
        rows.append(ThroughputRow(
            batch_size, len(prompt_ids), new_tokens, tokens / sum(run.seconds for run in ours), tokens / sum(theirs),
            decode_step_seconds=statistics.median(run.decode_step_seconds for run in ours),
            prune_seconds=statistics.median(run.prune_seconds for run in ours),
            kv_bytes_before_prune=ours[-1].kv_bytes_before_prune, kv_bytes_after_prune=ours[-1].kv_bytes_after_prune,
        ))
    return rows


def measure_overhead(in_process, grpc, label: str, run: Callable, repeats: int,
                     step: Callable[[str], None] = lambda _: None) -> tuple[OverheadRow, bool]:
    """Median wall seconds of the same request through `in_process` and `grpc` backends, alternated;
    `run(backend)` returns (response, seconds). Also says whether both returned the same texts and
    scores to the last digit (with the same seed and engine they should)."""
    seconds = {"in-process": [], "grpc": []}
    results = {"in-process": [], "grpc": []}
    sides = [("in-process", in_process), ("grpc", grpc)]
    for _, backend in sides:
        run(backend)  # warm-up: connections, lazy initialisation, caches
    for repeat in range(repeats):
        for name, backend in sides if repeat % 2 == 0 else sides[::-1]:
            response, wall = run(backend)
            seconds[name].append(wall)
            results[name].append([(c.index, c.text, c.num_tokens, c.score) for c in response.ranked])
            step(f"gRPC overhead: {name}")
    identical = all(r == results["in-process"][0] for r in results["in-process"] + results["grpc"])
    return OverheadRow(label, statistics.median(seconds["in-process"]), statistics.median(seconds["grpc"])), identical
