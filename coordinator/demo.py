"""python -m coordinator.demo: start the generator, reward and coordinator services on loopback
with the embedded default models, send one Speculative Rejection request on an AlpacaFarm prompt,
print the best response, its score and the per-round statistics, and stop the services."""
import argparse
import json
import pathlib
import tempfile

from common.local_stack import ROOT, Stack
from specrej.v1 import coordinator_pb2 as pb
from specrej.v1 import coordinator_pb2_grpc
from .client import print_result, print_round

PROMPTS = ROOT / "data" / "alpaca_farm_100.json"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m coordinator.demo", description=__doc__)
    parser.add_argument("--prompt-index", type=int, default=5, help="which AlpacaFarm prompt of data/alpaca_farm_100.json")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--rejection-rate", type=float, default=None, help="alpha; unset = the coordinator's default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kv-cache-budget", default=None, help="the generator's KV budget; unset = its default")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    prompt = json.loads(PROMPTS.read_text())[args.prompt_index]["prompt"]
    logs = pathlib.Path(tempfile.mkdtemp(prefix="specrej-demo-"))
    print(f"starting the generator, reward and coordinator services (logs in {logs}) ...", flush=True)
    generator_args = ("--kv-cache-budget", args.kv_cache_budget) if args.kv_cache_budget else ()
    with Stack(logs, generator_args=generator_args) as stack:
        print(f"\nprompt: {prompt}\n", flush=True)
        request = pb.GenerateRequest(prompt=prompt, n=args.n, max_new_tokens=args.max_new_tokens, seed=args.seed)
        if args.rejection_rate is not None:
            request.rejection_rate = args.rejection_rate
        for event in coordinator_pb2_grpc.CoordinatorStub(stack.channel).GenerateStream(request, timeout=1800):
            if event.HasField("round"):
                print_round(event.round)
            else:
                print_result(event.result)


if __name__ == "__main__":
    main()
