"""python -m bench.throughput.scoring_throughput: scoring outside a session against generating on
vLLM, side by side.

The generator's default engine (vLLM, through the vllm backend's own engine, as plain vLLM Best-of-N
calls it) samples n responses of --max-new-tokens tokens to one AlpacaFarm prompt (end of sequence
ignored, so exactly n x tokens are decoded), and the reward engine, in the same process, scores them
all in one unary Score call (each cut at its first end of turn, complete), as a Best-of-N user scores
what vLLM made. Reports the response tokens per second of both and their ratio, and the tokens the
reward model read against the response tokens it scored (the prompt is read once for all responses).
Both sides run at their service's default share of the cores (--cpu-threads auto: half of them
each, as the generator and the reward service take them when started side by side), so the ratio
is the one the deployed services have. With --repeats above 1 the two alternate (generate, score;
score, generate; ...) so that a change in the machine's load falls on both alike; rates pool total
tokens over total seconds."""
import argparse
import asyncio
import time
from dataclasses import dataclass, field

from bench.shared import plain_vllm
from bench.shared.figures import write_figures
from bench.shared.prompts import DEFAULT_PROMPTS, load_prompts
from common.chat import prompt_token_ids
from common.models import resolve_cpu_threads, resolve_model, set_cpu_threads
from reward_service.engine import ScoringEngine
from reward_service.scorers import Item, load_scorer
from reward_service.sessions import SessionCache


def finished_responses(tokenizer, sequences, eos_ids: set[int]) -> list[Item]:
    """Each sampled row up to its first end of turn, as a complete response."""
    items = []
    for tokens in sequences:
        end = next((i for i, token in enumerate(tokens) if token in eos_ids), len(tokens))
        items.append(Item(tokenizer.decode(tokens[:end]), complete=True))
    return items


@dataclass
class Totals:
    generated: int = 0  # tokens decoded
    generate_seconds: float = 0.0
    scored: int = 0  # response tokens scored
    read: int = 0  # tokens the reward model read
    score_seconds: float = 0.0
    responses: list[Item] = field(default_factory=list)  # the latest generated

    async def generate(self, backend, prompt_ids: list[int], n: int, tokens: int, seed: int, tag: str) -> None:
        began = time.perf_counter()
        rows = await plain_vllm.sample(backend.engine, prompt_ids, n, tokens, tag, ignore_eos=True, seed=seed)
        self.generate_seconds += time.perf_counter() - began
        self.generated += sum(len(row) for row in rows)
        self.responses = finished_responses(backend.tokenizer, rows, backend.eos_ids)

    def score(self, scoring: ScoringEngine, messages: list[dict]) -> None:
        began = time.perf_counter()
        result = scoring.submit(messages, self.responses).result()
        self.score_seconds += time.perf_counter() - began
        self.read += result.tokens
        self.scored += sum(len(body) for body in scoring.scorer.tokenize(messages, self.responses)[1])


async def measure(args, vllm=None) -> dict:
    """The figures; `vllm`: a VllmBackend already started on args.model (else one is started here)."""
    from generator_service.vllm_backend import VllmBackend

    owned = vllm is None
    if owned:
        vllm = VllmBackend(args.model, device=args.device, dtype=args.dtype, max_batch_size=args.responses,
                           compile=args.compile, cpu_threads=args.cpu_threads)
    set_cpu_threads(args.cpu_threads)
    scorer = load_scorer("lm-logprob", resolve_model(args.model), vllm.device, vllm.dtype, args.token_budget)
    scoring = ScoringEngine(scorer, sessions=SessionCache(1 << 30), batch_window_seconds=0)
    prompt = load_prompts(args.prompts)[args.prompt_index]
    messages = [{"role": "user", "content": prompt.text}]
    prompt_ids = prompt_token_ids(vllm.tokenizer, messages)
    totals = Totals()
    try:
        # First calls pay for lazy initialisation.
        await Totals().generate(vllm, prompt_ids, 2, 4, args.seed, "warm")
        scoring.submit(messages, [Item("Warm.", complete=True)]).result()
        for repeat in range(args.repeats):
            async def generate():
                await totals.generate(vllm, prompt_ids, args.responses, args.max_new_tokens, args.seed + repeat,
                                      f"sample-{repeat}")

            async def score():
                totals.score(scoring, messages)

            for side in (generate, score) if repeat % 2 == 0 else (score, generate):
                await side()
    finally:
        scoring.close()
        if owned:
            vllm.shutdown()
    generated, generated_seconds = totals.generated, totals.generate_seconds
    scored_tokens, read, scored_seconds = totals.scored, totals.read, totals.score_seconds
    generation_rate, scoring_rate = generated / generated_seconds, scored_tokens / scored_seconds
    prompt_tokens = len(scorer.tokenize(messages, [])[0])
    print(f"{scorer.name} on {scorer.device}/{scorer.dtype}: {args.responses} responses to AlpacaFarm prompt "
          f"{prompt.id} ({prompt_tokens} prompt tokens), {args.max_new_tokens} tokens sampled each on vLLM")
    print(f"generating: {generated} tokens in {generated_seconds:.1f} s, {generation_rate:.1f} tokens/s")
    print(f"scoring:    {scored_tokens} response tokens in {scored_seconds:.1f} s, {scoring_rate:.1f} tokens/s "
          f"({read} tokens read)")
    print(f"scoring / generating: {scoring_rate / generation_rate:.2f}; tokens read / response tokens: "
          f"{read / scored_tokens:.3f}")
    return {
        "generator": "vLLM", "scorer": scorer.name, "device": str(scorer.device),
        "dtype": str(scorer.dtype).removeprefix("torch."), "compile": args.compile,
        "cpu_threads_each": resolve_cpu_threads(args.cpu_threads) or "all",
        "prompt_id": prompt.id, "prompt_tokens": prompt_tokens, "responses": args.responses,
        "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "token_budget": args.token_budget,
        "generated_tokens": generated, "generate_seconds": generated_seconds,
        "generate_tokens_per_second": generation_rate,
        "response_tokens": scored_tokens, "tokens_read": read, "score_seconds": scored_seconds,
        "score_tokens_per_second": scoring_rate, "score_over_generate": scoring_rate / generation_rate,
        "tokens_read_per_response_token": read / scored_tokens}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput.scoring_throughput", description=__doc__)
    parser.add_argument("--model", default=None,
                        help="generator and likelihood reward model; unset = the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                        help="the vLLM engine's compilation, as the generator's --compile [default auto = on]")
    parser.add_argument("--cpu-threads", default="auto",
                        help="cores for each side on CPU, as the services' --cpu-threads [default auto = half each]")
    parser.add_argument("--prompts", default=str(DEFAULT_PROMPTS), help="prompt file [default: AlpacaFarm]")
    parser.add_argument("--prompt-index", type=int, default=0)
    parser.add_argument("--responses", type=int, default=128, help="responses sampled and scored [default 128]")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="tokens sampled per response [default 256]")
    parser.add_argument("--token-budget", type=int, default=8192,
                        help="most tokens in one forward pass of the reward model (the service's default)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="bench/results", help="folder for scoring_throughput.json")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    write_figures("bench.throughput.scoring_throughput", asyncio.run(measure(args)), args.out)


if __name__ == "__main__":
    main()
