"""python -m reward_service: score (prompt, response) pairs with a reward model over gRPC."""
import argparse
import asyncio
import logging

from common.flags import add_flag, add_model_service_flags


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m reward_service", description=__doc__)
    add_model_service_flags(parser, default_port=50052, default_metrics_port=9102)
    add_flag(parser, "scorer", env="SPECREJ_SCORER", default="lm-logprob", choices=["lm-logprob", "classifier"],
             help="lm-logprob: mean log-probability of the response under a causal LM; "
                  "classifier: a sequence-classification reward model")
    add_flag(parser, "token-budget", env="SPECREJ_TOKEN_BUDGET", default=8192, type=int,
             help="most response tokens (rows x longest response) in one forward pass; the prompt is shared")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(serve(args))


async def serve(args) -> None:
    from common import metrics as common_metrics
    from common.models import choose_device, choose_dtype, resolve_model
    from common.server import Server, ServerOptions
    from specrej.v1 import reward_pb2, reward_pb2_grpc
    from .scorers import load_scorer
    from .servicer import RewardServicer

    server = Server("reward", [reward_pb2.DESCRIPTOR.services_by_name["Reward"].full_name],
                    ServerOptions.from_args(args))
    model_name = args.model or "SmolLM2-135M-Instruct (embedded)"
    servicer = RewardServicer(model_name=model_name)
    reward_pb2_grpc.add_RewardServicer_to_server(servicer, server.grpc)
    await server.start()
    device = choose_device(args.device)
    dtype = choose_dtype(args.dtype, device)
    # Loading takes seconds to minutes; health keeps answering NOT_SERVING meanwhile.
    servicer.scorer = await asyncio.to_thread(
        load_scorer, args.scorer, resolve_model(args.model, args.model_cache), device, dtype, args.token_budget)
    common_metrics.set_build_info("reward", model_name, str(dtype).removeprefix("torch."), str(device))
    common_metrics.register_device_metrics("reward", device)
    await server.mark_serving()
    await server.serve_until_signalled()


if __name__ == "__main__":
    main()
