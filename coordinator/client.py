"""python -m coordinator.client "PROMPT": ask a running coordinator for the best of n responses.

Prints each decision point as it happens, then the best response, its score and the statistics."""
import argparse
import json
import sys

import grpc
from google.protobuf import json_format

from common.flags import add_flag
from specrej.v1 import coordinator_pb2 as pb
from specrej.v1 import coordinator_pb2_grpc

_METHODS = {"sr": pb.SPECULATIVE_REJECTION, "bon": pb.BEST_OF_N}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m coordinator.client", description=__doc__)
    parser.add_argument("prompt", help="the user message")
    add_flag(parser, "target", env="SPECREJ_TARGET", default="localhost:50050", help="coordinator address")
    parser.add_argument("--method", choices=sorted(_METHODS), default="sr", help="sr (Speculative Rejection) or bon")
    parser.add_argument("--n", type=int, default=16, help="initial candidates; 0 = as many as memory allows")
    parser.add_argument("--rejection-rate", type=float, default=None, help="alpha; the service default is 0.5")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--decision-every", type=int, default=0,
                        help="tokens between decision points; 0 = the default doubling schedule (see "
                             "--first-decision-tokens)")
    parser.add_argument("--first-decision-tokens", type=int, default=None,
                        help="first decision point of the doubling schedule; 0 = only when the generator's KV cache "
                             "is full [default: the coordinator's]")
    parser.add_argument("--adaptive-rejection", action="store_true",
                        help="reject at least the rejection rate, more when the partial rewards stand far apart")
    parser.add_argument("--decision-points", type=int, nargs="*", default=[], help="explicit token positions")
    parser.add_argument("--return-top", type=int, default=1, help="ranked candidates to print")
    parser.add_argument("--timeout", type=float, default=600.0, help="deadline in seconds")
    parser.add_argument("--json", action="store_true", help="print the whole response as JSON")
    return parser.parse_args(argv)


def build_request(args) -> pb.GenerateRequest:
    request = pb.GenerateRequest(
        prompt=args.prompt, n=args.n, method=_METHODS[args.method], max_new_tokens=args.max_new_tokens,
        top_k=args.top_k, decision_every_tokens=args.decision_every, decision_points=args.decision_points,
        return_top=args.return_top, adaptive_rejection=args.adaptive_rejection,
    )
    for field in ("rejection_rate", "temperature", "top_p", "seed", "first_decision_tokens"):
        if getattr(args, field) is not None:
            setattr(request, field, getattr(args, field))
    return request


def print_round(round_: pb.Round) -> None:
    print(f"decision point at token {round_.token_position:4d} ({round_.trigger}): "
          f"{round_.active_before} ranked, {round_.kept} kept, {round_.rejected} rejected, "
          f"cutoff {round_.cutoff_score:.4f}", flush=True)


def print_result(result: pb.GenerateResponse) -> None:
    stats = result.stats
    for place, candidate in enumerate(result.ranked, 1):
        print(f"\n#{place} candidate {candidate.index} score {candidate.score:.4f} "
              f"({candidate.num_tokens} tokens, {candidate.finish_reason})\n{candidate.text}")
    print(f"\nmethod {pb.Method.Name(stats.method)}, n {stats.initial_n}, alpha {stats.rejection_rate:g}, "
          f"seed {stats.seed}, {len(stats.rounds)} decision points")
    print(f"tokens decoded {stats.generated_tokens}, prompt {stats.prompt_tokens} tokens, "
          f"reward model read {stats.scored_tokens} tokens")
    print(f"latency {stats.latency_seconds:.2f}s: generate {stats.generate_seconds:.2f}s "
          f"(prefill {stats.prefill_seconds:.2f}s), score {stats.score_seconds:.2f}s, "
          f"coordinator {stats.coordinator_seconds:.3f}s")


def main(argv=None) -> int:
    args = parse_args(argv)
    with grpc.insecure_channel(args.target) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        try:
            for event in stub.GenerateStream(build_request(args), timeout=args.timeout):
                if event.HasField("round"):
                    if not args.json:
                        print_round(event.round)
                elif args.json:
                    print(json.dumps(json_format.MessageToDict(event.result), indent=2))
                else:
                    print_result(event.result)
        except grpc.RpcError as error:
            print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
