"""torch.compile of the decode step's dense parts (`--compile off|on|auto`).

Attention stays eager: it loops over the sessions of a step, whose shapes change every step. The
dense parts (norms, projections, rotary, MLP, LM head) see [padded rows, hidden] inputs, so each
padded row count compiles once. On CUDA they run as CUDA graphs (mode "reduce-overhead"), which
is where a decode step of a small model spends most of its time: launching kernels. `auto` turns
compilation on only there: on CPU (SmolLM2-135M, float32, a shared 2-core machine, one thread)
inductor was no faster than eager (eager/compiled 1.07, 0.91 and 1.02 at 8, 32 and 128 rows:
noise; `python -m bench.throughput.compiled_step`), since the step's time goes to the matrix products."""
import logging

import torch

log = logging.getLogger(__name__)

MODES = ("off", "on", "auto")


def should_compile(mode: str, device: torch.device) -> bool:
    if mode not in MODES:
        raise ValueError(f"compile mode {mode!r} is not one of {', '.join(MODES)}")
    return mode == "on" or (mode == "auto" and device.type == "cuda")


def compile_dense_parts(decoder, mode: str) -> bool:
    """Replace the decoder's dense parts by compiled ones when `mode` asks for it; True if it did."""
    if not should_compile(mode, decoder.device):
        return False
    options = {"mode": "reduce-overhead"} if decoder.device.type == "cuda" else {}

    def compiled(function):
        # One compiled object per layer: each keeps its own graphs (no recompile limit across layers).
        return torch.compile(function, dynamic=False, fullgraph=True, **options)

    decoder.layer_inputs = [compiled(f) for f in decoder.layer_inputs]
    decoder.layer_outputs = [compiled(f) for f in decoder.layer_outputs]
    decoder.logits = compiled(decoder.logits)
    if decoder.device.type == "cuda":
        # CUDA graph outputs are reused by the next replay; a new step may overwrite the last one's.
        decoder.step_begin = torch.compiler.cudagraph_mark_step_begin
    log.info("decode step compiled (%s)", options.get("mode", "inductor"))
    return True
