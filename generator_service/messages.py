"""specrej.v1 messages in and out of sessions: the one place that converts between protobuf and
the backend contract (backend.py), shared by the gRPC servicer and in-process callers (the benchmark)."""
from common.chat import message_dicts
from common.errors import FieldError
from specrej.v1 import generator_pb2 as pb
from .backend import AdvanceResult, Pruned, Started
from .request_plan import SessionRequest
from .sampling import SamplingParams


def sampling_params(params: pb.SamplingParams) -> SamplingParams:
    return SamplingParams(temperature=params.temperature, top_p=params.top_p or 1.0, top_k=params.top_k,
                          seed=params.seed)


def check_start(start: pb.StartSession) -> None:
    """Raise FieldError for the first invalid field the message alone shows."""
    sampling = start.sampling
    if not start.messages:
        raise FieldError("messages", "at least one message is required")
    for index, message in enumerate(start.messages):
        if not message.content.strip():
            raise FieldError(f"messages[{index}].content", "every message needs content")
    if start.max_new_tokens < 1:
        raise FieldError("max_new_tokens", "must be at least 1")
    if not sampling.temperature >= 0:
        raise FieldError("sampling.temperature", "must be >= 0")
    if not 0 <= sampling.top_p <= 1:
        raise FieldError("sampling.top_p", "must be in (0, 1] (0 means 1)")


def prepare_start(backend, start: pb.StartSession, kv_budget_tokens: int | None = None) -> SessionRequest:
    """Validate and tokenize `start` for a backend, or the native engine itself (no model work; may
    take a moment for a long prompt)."""
    check_start(start)
    options = {} if kv_budget_tokens is None else {"kv_budget_tokens": kv_budget_tokens}
    return backend.prepare(
        message_dicts(start.messages), n=start.n, max_new_tokens=start.max_new_tokens,
        sampling=sampling_params(start.sampling), min_tokens_before_full=start.min_tokens_before_full,
        **options,
    )


def open_from_start(engine, start: pb.StartSession, kv_budget_tokens: int | None = None):
    """prepare_start, then admission (or Overloaded)."""
    return engine.admit(prepare_start(engine, start, kv_budget_tokens))


def started_message(started: Started, tokenizer: str) -> pb.SessionStarted:
    return pb.SessionStarted(
        n=started.n, prompt_tokens=started.prompt_tokens, kv_cache_budget_bytes=started.kv_cache_budget_bytes,
        kv_cache_bytes=started.kv_cache_bytes, prefill_seconds=started.prefill_seconds,
        capacity_tokens=started.capacity_tokens, tokenizer=tokenizer,
    )


def advanced_message(result: AdvanceResult) -> pb.Advanced:
    return pb.Advanced(
        sequences=[pb.SequenceUpdate(index=u.index, text_delta=u.text_delta, num_tokens=u.num_tokens,
                                     finish_reason=u.finish_reason, token_ids=u.token_ids) for u in result.updates],
        position=result.position, steps=result.steps, decoded_tokens=result.decoded_tokens,
        decode_seconds=result.decode_seconds, kv_cache_bytes=result.kv_cache_bytes,
        capacity_tokens=result.capacity_tokens, memory_full=result.memory_full,
    )


def pruned_message(pruned: Pruned) -> pb.Pruned:
    return pb.Pruned(running=pruned.running, kv_cache_bytes=pruned.kv_cache_bytes,
                     prune_seconds=pruned.prune_seconds, capacity_tokens=pruned.capacity_tokens)
