"""The keys and values of one session's rows (its candidates' own tokens, not the shared prompt)."""
import torch


class RowKVCache:
    """[layer, k/v, row, kv_head, position, head_dim], pre-allocated to a capacity and written in
    place, never grown; keeping some rows copies them into a buffer sized for them alone, so the
    memory of the others is really freed."""

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device):
        self.shape = (num_layers, 2, num_kv_heads, head_dim)
        self.dtype, self.device = dtype, device
        self.buffer: torch.Tensor | None = None

    @classmethod
    def for_decoder(cls, decoder) -> "RowKVCache":
        return cls(decoder.num_layers, decoder.num_kv_heads, decoder.head_dim, decoder.dtype, decoder.device)

    @property
    def rows(self) -> int:
        return 0 if self.buffer is None else self.buffer.shape[2]

    @property
    def capacity(self) -> int:
        return 0 if self.buffer is None else self.buffer.shape[4]

    @property
    def bytes(self) -> int:
        return 0 if self.buffer is None else self.buffer.numel() * self.buffer.element_size()

    def allocate(self, rows: int, capacity: int) -> None:
        layers, kv, heads, dim = self.shape
        self.buffer = torch.empty((layers, kv, rows, heads, capacity, dim), dtype=self.dtype, device=self.device)

    def write(self, layer: int, slot: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Keys/values [rows, kv_head, head_dim] of every row's token at response position `slot`."""
        self.buffer[layer, 0, :, :, slot] = keys
        self.buffer[layer, 1, :, :, slot] = values

    def keys_values(self, layer: int, length: int) -> torch.Tensor:
        """[k/v, row, kv_head, length, head_dim]: the first `length` positions, a view."""
        return self.buffer[layer, :, :, :, :length]

    def keep(self, rows: torch.Tensor, used: int, capacity: int) -> None:
        """Keep only `rows` (indices), with their first `used` positions, in a buffer of `capacity`."""
        old = self.buffer
        self.allocate(rows.shape[0], capacity)
        if not rows.shape[0]:
            return  # no row left (all survivors had finished): nothing to copy, and no room for it
        for layer in range(old.shape[0]):
            self.buffer[layer, :, :, :, :used] = old[layer, :, rows, :, :used]

    def release(self) -> None:
        self.buffer = None
