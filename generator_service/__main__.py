"""python -m generator_service: serve a causal LM for Speculative Rejection over gRPC."""
import argparse
import asyncio
import logging

from common.flags import add_flag, add_model_service_flags, parse_bytes
from common.models import prefer_passive_openmp_waits


def parse_args(argv=None) -> argparse.Namespace:
    # These import torch, which main() imports only after choosing OpenMP's wait policy.
    from .compile import MODES as COMPILE_MODES
    from .decoder import DEFAULT_ROW_BLOCK

    parser = argparse.ArgumentParser(prog="python -m generator_service", description=__doc__)
    add_model_service_flags(parser, default_port=50051, default_metrics_port=9101)
    add_flag(parser, "kv-cache-budget", env="SPECREJ_KV_CACHE_BUDGET", default=None, type=parse_bytes,
             help="bytes of KV cache for all sessions (e.g. 2GiB); unset = free CUDA memory less 10%% on GPU, 2GiB on CPU")
    add_flag(parser, "max-batch-size", env="SPECREJ_MAX_BATCH_SIZE", default=256, type=int,
             help="most candidates one request may decode at once")
    add_flag(parser, "max-sessions", env="SPECREJ_MAX_SESSIONS", default=16, type=int,
             help="requests decoding at once; they share one decode step and the KV-cache budget as one pool")
    add_flag(parser, "max-queued", env="SPECREJ_MAX_QUEUED", default=32, type=int,
             help="requests waiting for KV-cache memory or a decoding place; beyond that RESOURCE_EXHAUSTED at once "
                  "(with a retry hint)")
    add_flag(parser, "row-block", env="SPECREJ_ROW_BLOCK", default=DEFAULT_ROW_BLOCK, type=int,
             help="rows per matrix product in batch-invariant mode, so a candidate's text never depends on "
                  "which others, of any request, are decoding beside it; 0 = one product over the whole batch "
                  "(faster, not invariant)")
    add_flag(parser, "prefill-chunk-tokens", env="SPECREJ_PREFILL_CHUNK_TOKENS", default=256, type=int,
             help="prompt tokens prefilled per decode-loop turn, between other requests' decode steps; "
                  "0 = a whole prompt at once")
    add_flag(parser, "max-prompt-bytes", env="SPECREJ_MAX_PROMPT_BYTES", default="1MiB", type=parse_bytes,
             help="most UTF-8 bytes of message content per request, checked before tokenizing")
    add_flag(parser, "compile", env="SPECREJ_COMPILE", default="auto", choices=COMPILE_MODES,
             help="torch.compile the decode step's dense parts (CUDA graphs on GPU); auto = on CUDA only, "
                  "where it is faster")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    prefer_passive_openmp_waits()
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(serve(args))


async def serve(args) -> None:
    from common import metrics as common_metrics
    from common.models import set_cpu_threads
    from common.receive_limit import receive_limited
    from common.server import Server, ServerOptions
    from specrej.v1 import generator_pb2, generator_pb2_grpc
    from . import metrics
    from .engine import GeneratorEngine, InputLimits
    from .servicer import GeneratorServicer

    server = Server("generator", [generator_pb2.DESCRIPTOR.services_by_name["Generator"].full_name],
                    receive_limited(ServerOptions.from_args(args), args.max_prompt_bytes))
    servicer = GeneratorServicer()
    generator_pb2_grpc.add_GeneratorServicer_to_server(servicer, server.grpc)
    await server.start()
    set_cpu_threads(args.cpu_threads)
    # Loading takes seconds to minutes; health keeps answering NOT_SERVING meanwhile.
    engine = await asyncio.to_thread(
        GeneratorEngine, args.model, device=args.device, dtype=args.dtype, kv_cache_budget=args.kv_cache_budget,
        max_batch_size=args.max_batch_size, max_sessions=args.max_sessions, max_queued=args.max_queued,
        row_block=args.row_block, prefill_chunk_tokens=args.prefill_chunk_tokens, compile=args.compile,
        limits=InputLimits(max_messages=args.max_messages, max_prompt_bytes=args.max_prompt_bytes,
                           max_prompt_tokens=args.max_prompt_tokens),
        model_cache=args.model_cache)
    servicer.engine = engine
    metrics.bind(engine)
    common_metrics.set_build_info("generator", engine.model_name, str(engine.dtype).removeprefix("torch."),
                                  str(engine.device))
    common_metrics.register_device_metrics("generator", engine.device)
    await server.mark_serving()
    await server.serve_until_signalled()


if __name__ == "__main__":
    main()
