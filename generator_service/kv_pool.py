"""The native engine's KV-cache memory as one pool: the budget every session's reservation comes
from (kept by admission.Admission, which also queues), each session's prompt keys/values and rows'
keys/values, and how far its rows can grow within its reservation (capacity).

Sessions hold what the pool gave them (prefix, cache, capacity, reservation_tokens); only the pool
allocates, resizes or frees it, so what a session holds and what the budget counts never disagree."""
import torch

from .admission import Admission
from .decoder import CausalDecoder
from .kv_cache import RowKVCache
from .planner import MemoryPlanner


class KVPool:
    def __init__(self, decoder: CausalDecoder, admission: Admission):
        self.decoder, self.admission = decoder, admission
        self.bytes_per_token = decoder.kv_bytes_per_token()

    def new_rows(self) -> RowKVCache:
        """An empty row cache for a new session; nothing allocated until its prompt is prefilled."""
        return RowKVCache.for_decoder(self.decoder)

    def allocate_prompt(self, session) -> None:
        session.prefix = self.decoder.new_prefix(session.prompt_length)

    def allocate_rows(self, session, rows: int) -> None:
        """`rows` rows, each as long as the session's reservation allows."""
        session.capacity = self.capacity(session, rows)
        session.cache.allocate(rows, session.capacity)

    def take_rows(self, session, rows: torch.Tensor, used: int) -> None:
        """The rows `rows` (indices; a row may come twice, for a branch) keep their first `used`
        positions in a buffer sized for them alone, so the memory of the others is really freed; the
        survivors grow into the room of the reservation, and what they can never use (beyond
        max_new_tokens each) goes back to the budget."""
        count = rows.shape[0]
        self.admission.shrink(session, min(session.reservation_tokens,
                                           session.prompt_length + count * session.max_new_tokens))
        session.capacity = self.capacity(session, count)
        session.cache.keep(rows, used, session.capacity)

    def grow(self, session, tokens: int) -> None:
        """Raise the session's reservation to `tokens` (its branches need it), or raise Overloaded."""
        self.admission.grow(session, tokens)

    def capacity(self, session, rows: int) -> int:
        """Response tokens each of `rows` rows can hold in the session's reservation."""
        planner = MemoryPlanner(session.reservation_tokens * self.bytes_per_token, self.bytes_per_token,
                                max_batch_size=session.n)
        return planner.capacity(session.prompt_length, rows, session.max_new_tokens)

    def held_bytes(self, session) -> int:
        prefix = session.prefix
        return session.cache.bytes + (0 if prefix is None else prefix.numel() * prefix.element_size())

    def release(self, session) -> None:
        """Free the session's keys/values and give its reservation back (admits whoever waits)."""
        session.prefix = None
        session.cache.release()
        self.admission.leave(session)
        if self.decoder.device.type == "cuda":
            # Hand freed KV memory back so other processes and the budget see it.
            torch.cuda.empty_cache()
