"""Session results as specrej.v1 messages; shared by the gRPC servicer and in-process callers."""
from specrej.v1 import generator_pb2 as pb
from .sampling import SamplingParams
from .session import AdvanceResult, Session


def sampling_params(params: pb.SamplingParams) -> SamplingParams:
    return SamplingParams(temperature=params.temperature, top_p=params.top_p or 1.0, top_k=params.top_k,
                          seed=params.seed)


def started_message(session: Session, prefill_seconds: float) -> pb.SessionStarted:
    return pb.SessionStarted(
        n=session.n, prompt_tokens=session.prompt_length, kv_cache_budget_bytes=session.planner.budget_bytes,
        kv_cache_bytes=session.kv_cache_bytes, prefill_seconds=prefill_seconds, capacity_tokens=session.capacity,
    )


def advanced_message(session: Session, result: AdvanceResult) -> pb.Advanced:
    return pb.Advanced(
        sequences=[pb.SequenceUpdate(index=u.index, text_delta=u.text_delta, num_tokens=u.num_tokens,
                                     finish_reason=u.finish_reason) for u in result.updates],
        position=session.position, steps=result.steps, decoded_tokens=result.decoded_tokens,
        decode_seconds=result.decode_seconds, kv_cache_bytes=session.kv_cache_bytes,
        capacity_tokens=session.capacity, memory_full=result.memory_full,
    )


def pruned_message(session: Session, seconds: float) -> pb.Pruned:
    return pb.Pruned(running=len(session.running_indices), kv_cache_bytes=session.kv_cache_bytes,
                     prune_seconds=seconds, capacity_tokens=session.capacity)
