"""python -m bench.load.score_ahead: how long a request waits for the reward model, scoring ahead or not,
on the real services with the embedded default models.

Starts the generator and reward services on loopback (each with its share of the cores, as bin/demo
does) and one coordinator per --score-ahead value, then sends bin/demo's request (an AlpacaFarm
prompt, n = 32, 128 tokens, the coordinator's default schedule and alpha) for each seed to every
coordinator in turn, so that drift in the machine's speed falls on all settings alike. Reports per
setting: latency, the time the request waited for scoring and its share of the latency, the tokens
the reward model read, and whether every setting returned the same response for each seed.
Takes about 40 s per request and setting on a 2-core CPU."""
import argparse
import json
import statistics
import tempfile

import grpc

from bench.shared.figures import write_figures
from common.local_stack import Service, Stack
from coordinator.demo import PROMPTS
from specrej.v1 import coordinator_pb2 as pb
from specrej.v1 import coordinator_pb2_grpc


def one_request(address: str, prompt: str, n: int, tokens: int, seed: int) -> pb.GenerateResponse:
    with grpc.insecure_channel(address) as channel:
        return coordinator_pb2_grpc.CoordinatorStub(channel).Generate(
            pb.GenerateRequest(prompt=prompt, n=n, max_new_tokens=tokens, seed=seed), timeout=1800)


def summary(responses: list[pb.GenerateResponse]) -> dict:
    latency = [r.stats.latency_seconds for r in responses]
    waited = [r.stats.score_seconds for r in responses]
    return {
        "requests": len(responses),
        "latency_s": latency, "score_waited_s": waited,
        "generate_s": [r.stats.generate_seconds for r in responses],
        "mean_latency_s": statistics.fmean(latency),
        "score_share": sum(waited) / sum(latency),
        "score_share_per_request": [w / t for w, t in zip(waited, latency)],
        "scored_tokens": sum(r.stats.scored_tokens for r in responses),
        "decoded_plus_prompt_tokens": sum(r.stats.generated_tokens + r.stats.prompt_tokens for r in responses),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.load.score_ahead", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--score-ahead", type=int, nargs="+", default=[0, 16, 8],
                        help="--score-ahead-tokens of each coordinator (0 = score only at decision points)")
    parser.add_argument("--prompt-index", type=int, default=5, help="which prompt of data/alpaca_farm_100.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--model", default=None, help="both model services' model; unset = the embedded default")
    parser.add_argument("--out", default="bench/results", help="folder for score_ahead.json")
    args = parser.parse_args(argv)
    prompt = json.loads(PROMPTS.read_text())[args.prompt_index]["prompt"]
    logs = tempfile.mkdtemp(prefix="specrej-score-ahead-")
    responses: dict[int, list[pb.GenerateResponse]] = {ahead: [] for ahead in args.score_ahead}
    model_args = ("--model", args.model) if args.model else ()
    with Stack(logs, generator_args=model_args, reward_args=model_args) as stack:
        coordinators = {ahead: Service("coordinator", "--generator", stack.generator.address, "--reward",
                                       stack.reward.address, "--score-ahead-tokens", str(ahead), log_dir=logs)
                        for ahead in args.score_ahead}
        try:
            one_request(coordinators[args.score_ahead[0]].address, prompt, 4, 8, 0)  # warm-up: lazy initialisation
            for seed in args.seeds:
                for ahead, coordinator in coordinators.items():
                    response = one_request(coordinator.address, prompt, args.n, args.max_new_tokens, seed)
                    responses[ahead].append(response)
                    stats = response.stats
                    print(f"seed {seed}, score ahead {ahead:>3}: latency {stats.latency_seconds:6.2f} s, waited for "
                          f"scoring {stats.score_seconds:5.2f} s ({stats.score_seconds / stats.latency_seconds:5.1%}), "
                          f"reward model read {stats.scored_tokens} tokens", flush=True)
        finally:
            for coordinator in coordinators.values():
                coordinator.stop()
    first = args.score_ahead[0]
    same_responses = all(
        [r.best.text for r in responses[ahead]] == [r.best.text for r in responses[first]] for ahead in responses)
    settings = {str(ahead): summary(rs) for ahead, rs in responses.items()}
    for ahead, figures in settings.items():
        figures["latency_ratio_to_first"] = settings[str(first)]["mean_latency_s"] / figures["mean_latency_s"]
        print(f"score ahead {ahead:>3}: mean latency {figures['mean_latency_s']:.2f} s "
              f"(score ahead {first}'s over this: {figures['latency_ratio_to_first']:.2f}x), scoring "
              f"{figures['score_share']:.1%} of it; scored / (decoded + prompt) tokens "
              f"{figures['scored_tokens'] / figures['decoded_plus_prompt_tokens']:.3f}")
    print(f"same best response in every setting for every seed: {same_responses}")
    write_figures("bench.load.score_ahead", {
        "request": {"prompt_index": args.prompt_index, "n": args.n, "max_new_tokens": args.max_new_tokens,
                    "seeds": args.seeds, "schedule": "the coordinator's default"},
        "same_best_response_every_setting": same_responses,
        "settings": settings,
    }, args.out)


if __name__ == "__main__":
    main()
