"""Memory planning: how many rows and tokens fit in the KV-cache budget.

The prompt's keys/values are stored once and shared; each row then needs `bytes_per_token` for
each response token it will hold. A memory-driven decision point comes when the rows' buffers
are full; rejecting rows frees room for the survivors to grow.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class MemoryPlanner:
    budget_bytes: int
    bytes_per_token: int
    max_batch_size: int

    def _row_tokens(self, prompt_tokens: int) -> int:
        return self.budget_bytes // self.bytes_per_token - prompt_tokens

    def capacity(self, prompt_tokens: int, rows: int, max_new_tokens: int) -> int:
        """Response tokens each of `rows` rows can hold."""
        return max(0, min(max_new_tokens, self._row_tokens(prompt_tokens) // max(rows, 1)))

    def max_rows(self, prompt_tokens: int, tokens_per_row: int) -> int:
        """Most rows that can each hold `tokens_per_row` tokens beside the prompt."""
        rows = max(0, self._row_tokens(prompt_tokens)) // max(tokens_per_row, 1)
        return min(rows, self.max_batch_size)
