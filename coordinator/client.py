"""specrej "PROMPT" (or python -m coordinator.client "PROMPT"): ask a running coordinator for the
best of n responses.

Prints each decision point as it happens, then the best response, its score and the statistics."""
import argparse
import json
import pathlib
import sys

from google.protobuf import json_format

from common.flags import add_flag
from specrej.client import Client
from specrej.errors import ServiceError
from specrej.v1 import coordinator_pb2 as pb

_METHODS = {"sr": pb.SPECULATIVE_REJECTION, "bon": pb.BEST_OF_N}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="specrej", description=__doc__)
    parser.add_argument("prompt", help="the user message")
    add_flag(parser, "target", env="SPECREJ_TARGET", default="localhost:50050", help="coordinator address")
    add_flag(parser, "tls-ca", env="SPECREJ_TLS_CA", default=None,
             help="PEM file of the CA that signed the server's certificate; turns TLS on (unset with "
                  "--tls-cert: the system's roots)")
    add_flag(parser, "tls-cert", env="SPECREJ_TLS_CERT", default=None,
             help="PEM file of this client's certificate (mutual TLS); turns TLS on; needs --tls-key")
    add_flag(parser, "tls-key", env="SPECREJ_TLS_KEY", default=None, help="PEM file of the client certificate's key")
    add_flag(parser, "token-file", env="SPECREJ_TOKEN_FILE", default=None,
             help="file holding the bearer token sent as `authorization: Bearer <token>`")
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
    parser.add_argument("--refill", action="store_true",
                        help="after each decision point, branch the best running survivors into the rows the "
                             "rejected freed, up to --n running")
    parser.add_argument("--decision-points", type=int, nargs="*", default=[], help="explicit token positions")
    parser.add_argument("--return-top", type=int, default=1, help="ranked candidates to print")
    parser.add_argument("--timeout", type=float, default=600.0, help="deadline in seconds, retries included")
    parser.add_argument("--json", action="store_true", help="print the whole response as JSON")
    return parser.parse_args(argv)


def request_fields(args) -> dict:
    """GenerateRequest fields from the command line; None leaves a field to the service's default."""
    return dict(
        prompt=args.prompt, n=args.n, method=_METHODS[args.method], max_new_tokens=args.max_new_tokens,
        top_k=args.top_k, decision_every_tokens=args.decision_every, decision_points=args.decision_points,
        return_top=args.return_top, rejection_rate=args.rejection_rate, temperature=args.temperature,
        top_p=args.top_p, seed=args.seed, first_decision_tokens=args.first_decision_tokens,
        adaptive_rejection=args.adaptive_rejection, refill=args.refill,
    )


def print_round(round_: pb.Round) -> None:
    print(f"decision point at token {round_.token_position:4d} ({round_.trigger}): "
          f"{round_.active_before} ranked, {round_.kept} kept, {round_.rejected} rejected, "
          f"cutoff {round_.cutoff_score:.4f}" + (f", {round_.branched} branched" if round_.branched else ""),
          flush=True)


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


def print_error(error: ServiceError) -> None:
    print(f"error: {error}", file=sys.stderr)
    for violation in error.field_violations:
        print(f"  {violation.field}: {violation.description}", file=sys.stderr)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        token = pathlib.Path(args.token_file).read_text().strip() if args.token_file else None
        client = Client(args.target, tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
                        token=token, timeout=args.timeout)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with client:
        try:
            for event in client.stream(**request_fields(args)):
                if event.HasField("round"):
                    if not args.json:
                        print_round(event.round)
                elif args.json:
                    print(json.dumps(json_format.MessageToDict(event.result), indent=2))
                else:
                    print_result(event.result)
        except ServiceError as error:
            print_error(error)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
