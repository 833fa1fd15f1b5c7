"""python -m coordinator: the public Speculative Rejection / Best-of-N API over gRPC."""
import argparse
import asyncio
import logging

from common.flags import add_flag, add_server_flags, add_upstream_tls_flags, parse_bytes
from coordinator.schedule import DEFAULT_FIRST_DECISION_TOKENS


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m coordinator", description=__doc__)
    add_server_flags(parser, default_port=50050, default_metrics_port=9100, reflection="on")
    add_flag(parser, "generator", env="SPECREJ_GENERATOR", default="localhost:50051",
             help="generator service address (HOST:PORT, or dns:///NAME:PORT to balance over replicas)")
    add_flag(parser, "reward", env="SPECREJ_REWARD", default="localhost:50052", help="reward service address")
    add_upstream_tls_flags(parser)
    add_flag(parser, "auth-token-file", env="SPECREJ_AUTH_TOKEN_FILE", default=None,
             help="file of bearer tokens, one per line, re-read when it changes; when set, calls need "
                  "`authorization: Bearer <token>` metadata (health checks excepted); unset = no authentication")
    add_flag(parser, "max-concurrent", env="SPECREJ_MAX_CONCURRENT", default=64, type=int,
             help="requests running at once; more wait in the queue")
    add_flag(parser, "max-queued", env="SPECREJ_MAX_QUEUED", default=256, type=int,
             help="requests waiting to run before new ones get RESOURCE_EXHAUSTED (with a retry hint)")
    add_flag(parser, "max-n", env="SPECREJ_MAX_N", default=1024, type=int,
             help="largest n a request may ask for (the generator's memory budget may allow fewer)")
    add_flag(parser, "max-prompt-bytes", env="SPECREJ_MAX_PROMPT_BYTES", default=1_000_000, type=parse_bytes,
             help="most UTF-8 bytes of prompt or message text in one request")
    add_flag(parser, "max-messages", env="SPECREJ_MAX_MESSAGES", default=256, type=int,
             help="most messages in one request's conversation")
    add_flag(parser, "max-decision-points", env="SPECREJ_MAX_DECISION_POINTS", default=1024, type=int,
             help="most explicit decision_points in one request")
    add_flag(parser, "memory-round-tokens", env="SPECREJ_MEMORY_ROUND_TOKENS", default=32, type=int,
             help="with memory-driven decision points, tokens every candidate must decode before the first one; "
                  "sizes n = 0 and bounds an explicit n")
    add_flag(parser, "first-decision-tokens", env="SPECREJ_FIRST_DECISION_TOKENS", default=DEFAULT_FIRST_DECISION_TOKENS,
             type=int, help="where a request with neither decision_every_tokens nor decision_points decides first, "
                            "in response tokens, then at each doubling (a full KV cache forces a decision point too); "
                            "0 = only where the KV cache is full (the paper's rule); a request's "
                            "first_decision_tokens overrides it")
    add_flag(parser, "score-ahead-tokens", env="SPECREJ_SCORE_AHEAD_TOKENS", default=8, type=int,
             help="between decision points, send the candidates' text to the reward service every this many tokens "
                  "while decoding goes on, so a decision point waits only for the scoring of the last few; "
                  "0 = score only at decision points. Decisions are the same either way")
    add_flag(parser, "default-timeout", env="SPECREJ_DEFAULT_TIMEOUT", default=300.0, type=float,
             help="seconds a request may take when its client sets no deadline (never more than --drain-grace-seconds)")
    args = parser.parse_args(argv)
    if args.score_ahead_tokens < 0:
        parser.error("--score-ahead-tokens must be 0 or more")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(serve(args))


async def serve(args) -> None:
    from common import metrics as common_metrics
    from common.auth import BearerTokenInterceptor, TokenFile
    from common.receive_limit import receive_limited
    from common.server import Server, ServerOptions
    from common.tls import ChannelTls
    from specrej.v1 import coordinator_pb2, coordinator_pb2_grpc
    from .admission import Admission
    from .clients import GeneratorClient, RewardClient
    from .request import Limits
    from .servicer import CoordinatorServicer

    interceptors = [BearerTokenInterceptor(TokenFile(args.auth_token_file))] if args.auth_token_file else []
    server = Server("coordinator", [coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name],
                    receive_limited(ServerOptions.from_args(args), args.max_prompt_bytes), interceptors=interceptors)
    upstream_tls = ChannelTls.from_upstream_args(args)
    limits = Limits(max_n=args.max_n, max_prompt_bytes=args.max_prompt_bytes, max_messages=args.max_messages,
                    max_decision_points=args.max_decision_points, memory_round_tokens=args.memory_round_tokens,
                    first_decision_tokens=args.first_decision_tokens)
    servicer = CoordinatorServicer(
        GeneratorClient(args.generator, upstream_tls), RewardClient(args.reward, upstream_tls),
        Admission(args.max_concurrent, args.max_queued, service="coordinator"), limits, args.default_timeout,
        args.score_ahead_tokens, max_request_seconds=args.drain_grace_seconds)
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(servicer, server.grpc)
    common_metrics.set_build_info("coordinator", model="")
    await server.start()
    await server.mark_serving()
    await server.serve_until_signalled()


if __name__ == "__main__":
    main()
