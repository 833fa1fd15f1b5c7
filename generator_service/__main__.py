"""python -m generator_service: serve a causal LM for Speculative Rejection over gRPC."""
import argparse
import asyncio
import logging

from common.flags import add_flag, add_model_service_flags, parse_bytes
from common.models import prefer_passive_openmp_waits

log = logging.getLogger("generator_service")
# Calls in flight when the engine fails cannot finish anyway; a short drain tells clients to move.
ENGINE_FAILURE_GRACE_SECONDS = 5.0


def parse_args(argv=None) -> argparse.Namespace:
    # These import torch, which main() imports only after choosing OpenMP's wait policy.
    from .compile import MODES as COMPILE_MODES
    from .decoder import DEFAULT_ROW_BLOCK

    from .backend import BACKENDS

    parser = argparse.ArgumentParser(prog="python -m generator_service", description=__doc__)
    add_model_service_flags(parser, default_port=50051, default_metrics_port=9101)
    add_flag(parser, "backend", env="SPECREJ_BACKEND", default="vllm", choices=BACKENDS,
             help="decoding engine: vllm (vLLM's engine: fastest; a candidate's text may depend on what decodes "
                  "beside it) or native (this project's engine: batch-invariant, so Speculative Rejection with "
                  "alpha 0 equals Best-of-N token for token)")
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
             help="native backend: rows per matrix product in batch-invariant mode, so a candidate's text never depends on "
                  "which others, of any request, are decoding beside it; 0 = one product over the whole batch "
                  "(faster, not invariant)")
    add_flag(parser, "prefill-chunk-tokens", env="SPECREJ_PREFILL_CHUNK_TOKENS", default=256, type=int,
             help="native backend: prompt tokens prefilled per decode-loop turn, between other requests' decode steps; "
                  "0 = a whole prompt at once")
    add_flag(parser, "max-prompt-bytes", env="SPECREJ_MAX_PROMPT_BYTES", default="1MiB", type=parse_bytes,
             help="most UTF-8 bytes of message content per request, checked before tokenizing")
    add_flag(parser, "compile", env="SPECREJ_COMPILE", default="auto", choices=COMPILE_MODES,
             help="compile the model: vllm backend: torch.compile and CUDA graphs, auto = on; native backend: "
                  "torch.compile the decode step's dense parts, auto = on CUDA only, where it is faster")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    prefer_passive_openmp_waits()
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(serve(args))


async def serve(args) -> None:
    import torch

    from common import metrics as common_metrics
    from common.models import set_cpu_threads
    from common.receive_limit import receive_limited
    from common.server import Server, ServerOptions
    from specrej.v1 import generator_pb2, generator_pb2_grpc
    from . import metrics
    from .backend import load_backend
    from .servicer import GeneratorServicer

    server = Server("generator", [generator_pb2.DESCRIPTOR.services_by_name["Generator"].full_name],
                    receive_limited(ServerOptions.from_args(args), args.max_prompt_bytes))
    servicer = GeneratorServicer()
    generator_pb2_grpc.add_GeneratorServicer_to_server(servicer, server.grpc)
    await server.start()
    set_cpu_threads(args.cpu_threads)
    # Loading takes seconds to minutes; health keeps answering NOT_SERVING meanwhile.
    backend = await asyncio.to_thread(load_backend, args)
    servicer.backend = backend
    metrics.bind(backend)
    info = backend.info
    common_metrics.set_build_info("generator", info.model, info.dtype, info.device)
    common_metrics.register_device_metrics("generator", torch.device(info.device))
    await server.mark_serving()
    try:
        signalled = asyncio.create_task(server.serve_until_signalled())
        failed = asyncio.create_task(wait_until_unhealthy(backend))
        done, _ = await asyncio.wait({signalled, failed}, return_when=asyncio.FIRST_COMPLETED)
        if failed in done:
            # Calls would only fail from now on: leave the fleet, so that the orchestrator restarts
            # this replica and clients move to the others.
            log.error("the %s engine failed; draining and exiting", args.backend)
            signalled.cancel()
            await server.drain(min(args.drain_grace_seconds, ENGINE_FAILURE_GRACE_SECONDS))
            raise SystemExit(1)
    finally:
        backend.shutdown()


async def wait_until_unhealthy(backend, interval: float = 1.0) -> None:
    while backend.healthy():
        await asyncio.sleep(interval)


if __name__ == "__main__":
    main()
