"""python -m bench.throughput.compiled_step: one decode step, eager against torch.compile'd dense parts.

Times decoder.decode_step for one session of 8, 32 and 128 rows (after warm-up, median of
`--repeats`), with the model's dense parts eager and then compiled (generator_service.compile),
and prints the ratios and how long compiling took; the numbers behind `--compile auto`."""
import argparse
import statistics
import time

import torch

from bench.shared.figures import write_figures
from common.models import choose_device, choose_dtype, resolve_model
from generator_service.compile import compile_dense_parts
from generator_service.decoder import CausalDecoder, Segment
from generator_service.kv_cache import RowKVCache

PROMPT_TOKENS, STEPS_BEFORE = 64, 16


def step_seconds(decoder: CausalDecoder, rows: int, repeats: int) -> float:
    device = decoder.device
    prefix = decoder.new_prefix(PROMPT_TOKENS)
    decoder.prefill_chunk(torch.arange(PROMPT_TOKENS, device=device) + 100, prefix, 0)
    cache = RowKVCache.for_decoder(decoder)
    cache.allocate(rows, STEPS_BEFORE + repeats + 3)
    padded = decoder.padded_rows(rows)
    tokens = torch.full((padded,), 200, dtype=torch.long, device=device)
    times = []
    for slot in range(STEPS_BEFORE + repeats + 2):
        positions = torch.full((padded,), PROMPT_TOKENS + slot, dtype=torch.long, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        began = time.perf_counter()
        decoder.decode_step(tokens, positions, [Segment(0, rows, prefix, cache, slot)])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - began)
    return statistics.median(times[STEPS_BEFORE:])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput.compiled_step", description=__doc__)
    parser.add_argument("--model", default=None, help="unset = the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--rows", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--out", default="bench/results", help="folder for compiled_step.json")
    args = parser.parse_args(argv)
    from transformers import AutoModelForCausalLM

    device = choose_device(args.device)
    dtype = choose_dtype(args.dtype, device)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(args.model), dtype=dtype).to(device).eval()
    decoder = CausalDecoder(model, row_block=32)
    eager = {rows: step_seconds(decoder, rows, args.repeats) for rows in args.rows}
    compile_dense_parts(decoder, "on")
    compiled, timings = {}, {}
    for rows in args.rows:
        began = time.perf_counter()
        step_seconds(decoder, rows, 0)  # compiles this row count
        compiling = time.perf_counter() - began
        compiled[rows] = step_seconds(decoder, rows, args.repeats)
        print(f"{rows:4d} rows on {device}/{dtype}: eager {eager[rows] * 1000:.1f} ms, compiled "
              f"{compiled[rows] * 1000:.1f} ms per step (eager/compiled x{eager[rows] / compiled[rows]:.2f}; "
              f"{STEPS_BEFORE + 2} warm-up steps, compiling included, {compiling:.0f} s)", flush=True)
        timings[rows] = {"eager_ms": eager[rows] * 1000, "compiled_ms": compiled[rows] * 1000,
                         "eager_over_compiled": eager[rows] / compiled[rows], "compile_s": compiling}
    write_figures("bench.throughput.compiled_step", {"device": str(device), "dtype": str(dtype), "rows": timings},
                  args.out)


if __name__ == "__main__":
    main()
