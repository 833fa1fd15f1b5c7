"""Branches of running sequences (refill): the checks and the memory every generator backend applies
the same way. A branch continues its parent's tokens as a new sequence of the session; the session's
running sequences stay at most its initial n, and their reservation may grow back to what admission
first gave the session, no further."""
from common.errors import FieldError
from .planner import MemoryPlanner


def fork_reservation(parents: list[int], running: list[int], *, n: int, prompt_tokens: int, max_new_tokens: int,
                     reservation_tokens: int, initial_reservation_tokens: int, bytes_per_token: int,
                     position: int) -> int:
    """The reservation (KV-cache tokens) the session needs once `parents` are branched, the running
    sequences being at `position` tokens; raises FieldError naming `fork_from` when they cannot be."""
    unknown = sorted(set(parents) - set(running))
    if unknown:
        raise FieldError("fork_from", f"indices {unknown} are not running sequences of this session")
    rows = len(running) + len(parents)
    if rows > n:
        raise FieldError("fork_from", f"{len(parents)} branches beside {len(running)} running sequences exceed "
                                      f"the session's {n}")
    needed = max(reservation_tokens, min(initial_reservation_tokens, prompt_tokens + rows * max_new_tokens))
    planner = MemoryPlanner(needed * bytes_per_token, bytes_per_token, max_batch_size=n)
    capacity = planner.capacity(prompt_tokens, rows, max_new_tokens)
    if capacity <= position:
        raise FieldError("fork_from", f"the session's KV-cache reservation holds {rows} sequences up to {capacity} "
                                      f"tokens each; they already have {position}")
    return needed
