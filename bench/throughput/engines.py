"""python -m bench --parts engines (or python -m bench.throughput.engines): decoding throughput of
the generator's two backends against plain vLLM and Hugging Face generate(), side by side.

Every engine decodes n samples of one AlpacaFarm prompt, end of sequence ignored, so each decodes
exactly n x tokens; the vllm backend and plain vLLM share one vLLM engine (the backend's own), the
native backend and generate() share one model in this process. Each configuration runs the four in
a rotated order per repeat, so a change in the machine's load falls on all alike; rates pool total
tokens over total seconds, from the start of the request (prefill included) to its last token."""
import argparse
import asyncio
import time
from dataclasses import dataclass

from bench.shared import plain_vllm
from bench.shared.figures import write_figures
from bench.shared.prompts import DEFAULT_PROMPTS, load_prompts
from common.chat import prompt_token_ids
from common.models import resolve_model
from generator_service.sampling import SamplingParams

ENGINES = ("vllm backend", "plain vLLM", "native backend", "HF generate()")
DEFAULT_SHAPES = ((8, 64), (32, 64), (128, 64), (32, 256))


@dataclass
class Rate:
    tokens: int = 0
    seconds: float = 0.0

    def add(self, tokens: int, seconds: float) -> None:
        self.tokens += tokens
        self.seconds += seconds

    @property
    def per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


async def vllm_backend_seconds(backend, prompt_ids: list[int], n: int, tokens: int, sampling: SamplingParams) -> float:
    request = backend.rules.plan(prompt_ids, n=n, max_new_tokens=tokens, sampling=sampling,
                                 min_tokens_before_full=tokens, stop_at_eos=False)
    began = time.perf_counter()
    session = backend.admit(request)
    try:
        await session.start()
        result = await session.advance(tokens)
    finally:
        session.close()
    seconds = time.perf_counter() - began
    decoded = sum(update.num_tokens for update in result.updates)
    if decoded != n * tokens:
        raise RuntimeError(f"the vllm backend decoded {decoded} tokens, not {n} x {tokens}")
    return seconds


async def plain_vllm_seconds(backend, prompt_ids: list[int], n: int, tokens: int, sampling: SamplingParams,
                             tag: str) -> float:
    """n requests of the prompt straight to the backend's vLLM engine, as a Best-of-N user would send them."""
    began = time.perf_counter()
    rows = await plain_vllm.sample(backend.engine, prompt_ids, n, tokens, tag, temperature=sampling.temperature,
                                   ignore_eos=True, seed=sampling.seed)
    decoded = sum(len(row) for row in rows)
    seconds = time.perf_counter() - began
    if decoded != n * tokens:
        raise RuntimeError(f"plain vLLM decoded {decoded} tokens, not {n} x {tokens}")
    return seconds


async def measure(args, vllm=None) -> dict:
    """The figures; `vllm`: a VllmBackend already started on args.model (else one is started here)."""
    from transformers import AutoModelForCausalLM

    from bench.throughput.decoding import engine_run, generate_seconds
    from generator_service.engine import GeneratorEngine
    from generator_service.vllm_backend import VllmBackend

    most = max(n for n, _ in args.shapes)
    owned = vllm is None
    if owned:
        vllm = VllmBackend(args.model, device=args.device, dtype=args.dtype, max_batch_size=most,
                           cpu_threads=args.cpu_threads, compile=args.compile)
    native = GeneratorEngine(args.model, device=args.device, dtype=args.dtype, max_batch_size=most)
    hf_model = AutoModelForCausalLM.from_pretrained(resolve_model(args.model), dtype=native.dtype).to(native.device)
    try:
        prompt = load_prompts(args.prompts)[args.prompt_index]
        prompt_ids = prompt_token_ids(native.tokenizer, [{"role": "user", "content": prompt.text}])
        sampling = SamplingParams(temperature=1.0, seed=args.seed)
        runs = iter(range(10**9))

        async def seconds_of(engine: str, n: int, tokens: int) -> float:
            if engine == "vllm backend":
                return await vllm_backend_seconds(vllm, prompt_ids, n, tokens, sampling)
            if engine == "plain vLLM":
                return await plain_vllm_seconds(vllm, prompt_ids, n, tokens, sampling, f"plain-{next(runs)}")
            if engine == "native backend":
                return engine_run(native, prompt_ids, n, tokens, sampling).seconds
            return generate_seconds(hf_model.eval(), prompt_ids, n, tokens, sampling,
                                    native.tokenizer.pad_token_id or 0)

        for engine in ENGINES:  # first calls pay for lazy initialisation
            await seconds_of(engine, 2, 4)
        rows = []
        for n, tokens in args.shapes:
            rates = {engine: Rate() for engine in ENGINES}
            for repeat in range(args.repeats):
                order = ENGINES[repeat % len(ENGINES):] + ENGINES[:repeat % len(ENGINES)]
                for engine in order:
                    rates[engine].add(n * tokens, await seconds_of(engine, n, tokens))
            row = {"n": n, "tokens": tokens, **{f"{e} tokens/s": rates[e].per_second for e in ENGINES},
                   "vllm backend / plain vLLM": rates["vllm backend"].per_second / rates["plain vLLM"].per_second,
                   "vllm backend / native backend": rates["vllm backend"].per_second / rates["native backend"].per_second}
            rows.append(row)
            print(f"n={n:>3} x {tokens:>3}: " + ", ".join(f"{e} {rates[e].per_second:6.0f}" for e in ENGINES)
                  + f" tokens/s; vllm backend / plain vLLM {row['vllm backend / plain vLLM']:.2f}, "
                    f"/ native {row['vllm backend / native backend']:.2f}", flush=True)
        return {"prompt_id": prompt.id, "prompt_tokens": len(prompt_ids), "device": vllm.info.device,
                "dtype": vllm.info.dtype, "repeats": args.repeats, "seed": args.seed, "compile": args.compile,
                "cpu_threads": args.cpu_threads, "rows": rows}
    finally:
        native.shutdown()
        if owned:
            vllm.shutdown()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput.engines", description=__doc__)
    parser.add_argument("--model", default=None, help="unset = the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                        help="the vllm engine's compilation, as the generator's --compile [default auto = on]")
    parser.add_argument("--cpu-threads", type=int, default=0,
                        help="cores for the vLLM engine on CPU [default 0 = all, as torch uses for the others]")
    parser.add_argument("--prompts", default=str(DEFAULT_PROMPTS))
    parser.add_argument("--prompt-index", type=int, default=1)
    parser.add_argument("--shapes", default=",".join(f"{n}x{t}" for n, t in DEFAULT_SHAPES),
                        type=lambda text: tuple(tuple(int(v) for v in s.split("x")) for s in text.split(",")),
                        help="n x tokens per configuration [default %(default)s]")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="bench/results", help="folder for engines.json")
    return parser.parse_args(argv)


def main(argv=None, command: str | None = None) -> None:
    args = parse_args(argv)
    write_figures("bench.throughput.engines", asyncio.run(measure(args)), args.out, command)


def run_engines_part(bench_args: argparse.Namespace, command: str) -> None:
    """`python -m bench --parts engines`: this benchmark at its defaults, with python -m bench's model,
    device, dtype and output folder."""
    model = ["--model", bench_args.model] if bench_args.model else []
    main([*model, "--device", bench_args.device, "--dtype", bench_args.dtype, "--out", bench_args.out], command)


if __name__ == "__main__":
    main()
