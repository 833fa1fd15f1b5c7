"""python -m bench.throughput.scoring_throughput: scoring outside a session against generating, side by side.

The generator engine samples n responses of --max-new-tokens tokens to one AlpacaFarm prompt (end of
sequence ignored, so exactly n x tokens are decoded), and the reward engine, in the same process,
scores them all in one unary Score call (each cut at its first end of turn, complete). Reports the
response tokens per second of both and their ratio, and the tokens the reward model read against
the response tokens it scored (the prompt is read once for all responses). With --repeats above 1
the two alternate (generate, score; score, generate; ...) so that a change in the machine's load
falls on both alike; rates pool total tokens over total seconds."""
import argparse
import time
from dataclasses import dataclass, field

from bench.shared.figures import write_figures
from bench.shared.prompts import DEFAULT_PROMPTS, load_prompts
from bench.throughput.decoding import engine_run
from common.chat import prompt_token_ids
from common.models import resolve_model
from generator_service.engine import GeneratorEngine
from generator_service.sampling import SamplingParams
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

    def generate(self, generator, prompt_ids: list[int], n: int, tokens: int, sampling: SamplingParams) -> None:
        run = engine_run(generator, prompt_ids, n, tokens, sampling)
        self.generated += n * tokens
        self.generate_seconds += run.seconds
        self.responses = finished_responses(generator.tokenizer, run.sequences, generator.eos_ids)

    def score(self, scoring: ScoringEngine, messages: list[dict]) -> None:
        began = time.perf_counter()
        result = scoring.submit(messages, self.responses).result()
        self.score_seconds += time.perf_counter() - began
        self.read += result.tokens
        self.scored += sum(len(body) for body in scoring.scorer.tokenize(messages, self.responses)[1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput.scoring_throughput", description=__doc__)
    parser.add_argument("--model", default=None,
                        help="generator and likelihood reward model; unset = the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--prompts", default=str(DEFAULT_PROMPTS), help="prompt file [default: AlpacaFarm]")
    parser.add_argument("--prompt-index", type=int, default=0)
    parser.add_argument("--responses", type=int, default=128, help="responses sampled and scored [default 128]")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="tokens sampled per response [default 256]")
    parser.add_argument("--token-budget", type=int, default=8192,
                        help="most tokens in one forward pass of the reward model (the service's default)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="bench/results", help="folder for scoring_throughput.json")
    args = parser.parse_args(argv)

    generator = GeneratorEngine(args.model, device=args.device, dtype=args.dtype, max_batch_size=args.responses)
    scorer = load_scorer("lm-logprob", resolve_model(args.model), generator.device, generator.dtype,
                         args.token_budget)
    scoring = ScoringEngine(scorer, sessions=SessionCache(1 << 30), batch_window_seconds=0)
    prompt = load_prompts(args.prompts)[args.prompt_index]
    messages = [{"role": "user", "content": prompt.text}]
    prompt_ids = prompt_token_ids(generator.tokenizer, messages)
    sampling = SamplingParams(seed=args.seed)
    totals = Totals()
    try:
        # First calls pay for lazy initialisation.
        Totals().generate(generator, prompt_ids, 2, 4, sampling)
        scoring.submit(messages, [Item("Warm.", complete=True)]).result()
        sides = [lambda: totals.generate(generator, prompt_ids, args.responses, args.max_new_tokens, sampling),
                 lambda: totals.score(scoring, messages)]
        for repeat in range(args.repeats):
            for measure in sides if repeat % 2 == 0 else sides[::-1]:
                measure()
    finally:
        scoring.close()
        generator.shutdown()
    generated, generated_seconds = totals.generated, totals.generate_seconds
    scored_tokens, read, scored_seconds = totals.scored, totals.read, totals.score_seconds
    generation_rate, scoring_rate = generated / generated_seconds, scored_tokens / scored_seconds
    prompt_tokens = len(scorer.tokenize(messages, [])[0])
    print(f"{scorer.name} on {generator.device}/{scorer.dtype}: {args.responses} responses to AlpacaFarm prompt "
          f"{prompt.id} ({prompt_tokens} prompt tokens), {args.max_new_tokens} tokens sampled each")
    print(f"generating: {generated} tokens in {generated_seconds:.1f} s, {generation_rate:.1f} tokens/s")
    print(f"scoring:    {scored_tokens} response tokens in {scored_seconds:.1f} s, {scoring_rate:.1f} tokens/s "
          f"({read} tokens read)")
    print(f"scoring / generating: {scoring_rate / generation_rate:.2f}; tokens read / response tokens: "
          f"{read / scored_tokens:.3f}")
    write_figures("bench.throughput.scoring_throughput", {
        "scorer": scorer.name, "device": str(generator.device), "dtype": str(scorer.dtype).removeprefix("torch."),
        "prompt_id": prompt.id, "prompt_tokens": prompt_tokens, "responses": args.responses,
        "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "token_budget": args.token_budget,
        "generated_tokens": generated, "generate_seconds": generated_seconds,
        "generate_tokens_per_second": generation_rate,
        "response_tokens": scored_tokens, "tokens_read": read, "score_seconds": scored_seconds,
        "score_tokens_per_second": scoring_rate, "score_over_generate": scoring_rate / generation_rate,
        "tokens_read_per_response_token": read / scored_tokens}, args.out)


if __name__ == "__main__":
    main()
