"""python -m reward_service: score (prompt, response) pairs with a reward model over gRPC."""
import argparse
import asyncio
import logging

from common.flags import add_flag, add_model_service_flags, parse_bytes
from common.models import prefer_passive_openmp_waits
from .judge_template import JudgeTemplate, TemplateError


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m reward_service", description=__doc__)
    add_model_service_flags(parser, default_port=50052, default_metrics_port=9102)
    add_flag(parser, "scorer", env="SPECREJ_SCORER", default="lm-logprob",
             choices=["lm-logprob", "classifier", "judge"],
             help="lm-logprob: mean log-probability of the response under a causal LM; "
                  "classifier: a sequence-classification reward model; "
                  "judge: a chat model asked whether the response is good, log P(Yes) - log P(No)")
    add_flag(parser, "judge-template", env="SPECREJ_JUDGE_TEMPLATE", default=None,
             help="the judge's question, as the user's message: a file holding it, or the text itself, with "
                  "{conversation} and then {response} in it, whitespace on each side of {response} ({{ and }} for "
                  "literal braces); it should ask for "
                  "Yes or No; unset = a built-in one: the conversation as a question, the response as its answer, "
                  "then 'Is this a good answer to the question? Answer Yes or No.'")
    add_flag(parser, "token-budget", env="SPECREJ_TOKEN_BUDGET", default=8192, type=int,
             help="most tokens read in one forward pass (prompts and responses packed without padding; "
                  "classifiers that are recomputed: rows x longest row)")
    add_flag(parser, "batch-window-ms", env="SPECREJ_BATCH_WINDOW_MS", default=5.0, type=float,
             help="Score calls arriving within this long after the first are run together")
    add_flag(parser, "max-queued", env="SPECREJ_MAX_QUEUED", default=64, type=int,
             help="Score calls waiting for the model before new ones get RESOURCE_EXHAUSTED")
    add_flag(parser, "cache-budget", env="SPECREJ_CACHE_BUDGET", default="2GiB", type=parse_bytes,
             help="memory for keys/values kept between the rounds of ScoreSession streams; a stream that does "
                  "not fit is recomputed from scratch at each round")
    add_flag(parser, "max-items", env="SPECREJ_MAX_ITEMS", default=4096, type=int,
             help="most responses in one Score call")
    add_flag(parser, "max-response-tokens", env="SPECREJ_MAX_RESPONSE_TOKENS", default=0, type=int,
             help="most tokens in one response; 0 = the model's context minus the conversation")
    args = parser.parse_args(argv)
    try:
        args.judge_template = JudgeTemplate.load(args.judge_template)
    except TemplateError as error:
        parser.error(f"--judge-template: {error}")
    return args


def main(argv=None) -> None:
    prefer_passive_openmp_waits()
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(serve(args))


def load_engine(args):
    from common.models import bind_process_to_cores, choose_device, choose_dtype, resolve_cpu_threads, \
        resolve_model, service_cores, set_cpu_threads
    from .engine import ScoringEngine
    from .limits import InputLimits, longest_token_chars
    from .scorers import load_scorer
    from .sessions import SessionCache

    set_cpu_threads(args.cpu_threads)
    device = choose_device(args.device)
    threads = resolve_cpu_threads(args.cpu_threads)
    if device.type == "cpu" and threads > 0:
        # Off the cores the generator's engine is bound to, where the OS would otherwise move it.
        bind_process_to_cores(service_cores(threads, "last"))
    scorer = load_scorer(args.scorer, resolve_model(args.model, args.model_cache), device,
                         choose_dtype(args.dtype, device), args.token_budget, args.judge_template)
    limits = InputLimits(max_context=scorer.max_context, max_items=args.max_items, max_messages=args.max_messages,
                         max_prompt_tokens=args.max_prompt_tokens, max_response_tokens=args.max_response_tokens,
                         max_token_chars=longest_token_chars(scorer.tokenizer))
    return ScoringEngine(scorer, sessions=SessionCache(args.cache_budget), limits=limits,
                         batch_window_seconds=args.batch_window_ms / 1000, max_queued=args.max_queued)


async def serve(args) -> None:
    from common import metrics as common_metrics
    from common.server import Server, ServerOptions
    from specrej.v1 import reward_pb2, reward_pb2_grpc
    from .servicer import RewardServicer

    server = Server("reward", [reward_pb2.DESCRIPTOR.services_by_name["Reward"].full_name],
                    ServerOptions.from_args(args))
    model_name = args.model or "SmolLM2-135M-Instruct (embedded)"
    servicer = RewardServicer(model_name=model_name)
    reward_pb2_grpc.add_RewardServicer_to_server(servicer, server.grpc)
    await server.start()
    # Loading takes seconds to minutes; health keeps answering NOT_SERVING meanwhile.
    engine = await asyncio.to_thread(load_engine, args)
    servicer.engine = engine
    scorer = engine.scorer
    common_metrics.set_build_info("reward", model_name, str(scorer.dtype).removeprefix("torch."), str(scorer.device))
    common_metrics.register_device_metrics("reward", scorer.device)
    await server.mark_serving()
    try:
        await server.serve_until_signalled()
    finally:
        engine.close()


if __name__ == "__main__":
    main()
