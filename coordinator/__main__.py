"""python -m coordinator: the public Speculative Rejection / Best-of-N API over gRPC."""
import argparse
import logging

from common.flags import add_flag, add_server_flags
from coordinator.schedule import DEFAULT_FIRST_DECISION_TOKENS


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m coordinator", description=__doc__)
    add_server_flags(parser, default_port=50050, default_metrics_port=9100)
    add_flag(parser, "generator", env="SPECREJ_GENERATOR", default="localhost:50051",
             help="generator service address (HOST:PORT, or dns:///NAME:PORT to balance over replicas)")
    add_flag(parser, "reward", env="SPECREJ_REWARD", default="localhost:50052", help="reward service address")
    add_flag(parser, "max-n", env="SPECREJ_MAX_N", default=1024, type=int,
             help="largest n a request may ask for (the generator's memory budget may allow fewer)")
    add_flag(parser, "memory-round-tokens", env="SPECREJ_MEMORY_ROUND_TOKENS", default=32, type=int,
             help="with memory-driven decision points, tokens every candidate must decode before the first one; "
                  "sizes n = 0 and bounds an explicit n")
    add_flag(parser, "first-decision-tokens", env="SPECREJ_FIRST_DECISION_TOKENS", default=DEFAULT_FIRST_DECISION_TOKENS,
             type=int, help="where a request with neither decision_every_tokens nor decision_points decides first, "
                            "in response tokens, then at each doubling (a full KV cache forces a decision point too); "
                            "0 = only where the KV cache is full (the paper's rule); a request's "
                            "first_decision_tokens overrides it")
    add_flag(parser, "default-timeout", env="SPECREJ_DEFAULT_TIMEOUT", default=600.0, type=float,
             help="seconds a request may take when its client sets no deadline")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from common import metrics as common_metrics
    from common.server import Server
    from specrej.v1 import coordinator_pb2, coordinator_pb2_grpc
    from .clients import GeneratorClient, RewardClient
    from .servicer import CoordinatorServicer

    server = Server("coordinator", [coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name],
                    host=args.host, port=args.port, max_workers=args.max_workers, metrics_port=args.metrics_port)
    servicer = CoordinatorServicer(GeneratorClient(args.generator), RewardClient(args.reward), max_n=args.max_n,
                                   memory_round_tokens=args.memory_round_tokens, default_timeout=args.default_timeout,
                                   first_decision_tokens=args.first_decision_tokens)
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(servicer, server.grpc)
    common_metrics.set_build_info("coordinator", model="")
    server.start()
    server.mark_serving()
    server.wait()


if __name__ == "__main__":
    main()
