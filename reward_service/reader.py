"""Reading token sequences through a Llama-family Hugging Face model, in pieces, with the keys and
values kept so that a later piece reads only what is new.

Norms, MLPs, projections, rotary tables and embeddings are the Hugging Face modules themselves; only
attention is written here, because that is what lets many responses attend to one copy of their
prompt's keys/values: each response row attends to the shared prompt and to its own tokens, and
nothing of the prompt is ever copied per row.
"""
from dataclasses import dataclass

import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def is_readable(model) -> bool:
    """Whether `CausalReader` can read this model: a supported decoder with full attention (a sliding
    window would make attention depend on distance in a way this reader does not model)."""
    config = model.config
    sliding = getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True)
    return config.model_type in SUPPORTED_MODEL_TYPES and not sliding and hasattr(model.base_model, "layers")


class SequenceKV:
    """Keys/values and final hidden states of one token sequence, in buffers that grow by doubling.

    `keys_values` is [layer, k/v, kv_head, position, head_dim]; `hidden` is [position, hidden_size]
    (after the final norm, ready for the output head). Positions [0, length) hold real tokens.
    Without `keys_values` (a sequence read in one pass and never extended) only the hidden states are
    kept: writing every layer's keys/values of every response would cost memory traffic for nothing."""

    def __init__(self, reader: "CausalReader", capacity: int = 16, keys_values: bool = True):
        self._reader = reader
        self.keys_values = reader.new_keys_values(capacity) if keys_values else None
        self.hidden = reader.new_hidden(capacity)
        self.length = 0

    def reserve(self, length: int) -> None:
        capacity = self.hidden.shape[0]
        if length <= capacity:
            return
        capacity = max(length, 2 * capacity)
        hidden = self._reader.new_hidden(capacity)
        hidden[: self.length] = self.hidden[: self.length]
        if self.keys_values is not None:
            keys_values = self._reader.new_keys_values(capacity)
            keys_values[..., : self.length, :] = self.keys_values[..., : self.length, :]
            self.keys_values = keys_values
        self.hidden = hidden

    def truncate(self, length: int) -> None:
        self.length = min(self.length, length)

    @property
    def nbytes(self) -> int:
        kept = self.keys_values.numel() * self.keys_values.element_size() if self.keys_values is not None else 0
        return kept + self.hidden.numel() * self.hidden.element_size()


@dataclass
class Piece:
    """The next `count` tokens of a sequence, from `ids[kv.length]` on, to be read after `prefix`."""
    kv: SequenceKV
    ids: list[int]
    count: int
    prefix: SequenceKV | None = None


class CausalReader:
    """Runs pieces of many sequences in one forward pass: the projections and MLPs over all their
    tokens packed together (no padding), attention per group of pieces that share a prefix."""

    def __init__(self, model):
        base = model.base_model
        config = model.config
        self.embed, self.layers, self.norm, self.rotary = base.embed_tokens, list(base.layers), base.norm, base.rotary_emb
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.group = self.num_heads // self.num_kv_heads
        self.hidden_size = config.hidden_size
        first_attention = self.layers[0].self_attn
        self.scale = getattr(first_attention, "scaling", self.head_dim**-0.5)
        self.has_qk_norm = hasattr(first_attention, "q_norm")
        weight = self.embed.weight
        self.device, self.dtype = weight.device, weight.dtype

    def new_keys_values(self, capacity: int) -> torch.Tensor:
        return torch.empty((len(self.layers), 2, self.num_kv_heads, capacity, self.head_dim),
                           dtype=self.dtype, device=self.device)

    def new_hidden(self, capacity: int) -> torch.Tensor:
        return torch.empty((capacity, self.hidden_size), dtype=self.dtype, device=self.device)

    @torch.inference_mode()
    def read(self, pieces: list[Piece]) -> None:
        """Read each piece's tokens; their keys/values (where `kv` keeps them) and final hidden states
        land in the piece's `kv`, whose `length` then grows by `count`."""
        starts = [p.kv.length for p in pieces]
        offsets = [p.prefix.length if p.prefix is not None else 0 for p in pieces]
        ids = [t for p, start in zip(pieces, starts) for t in p.ids[start : start + p.count]]
        positions = torch.cat([torch.arange(o + s, o + s + p.count) for p, s, o in zip(pieces, starts, offsets)])
        for piece, start in zip(pieces, starts):
            piece.kv.reserve(start + piece.count)
        spans, end = [], 0
        for piece in pieces:
            spans.append((end, end + piece.count))
            end += piece.count
        groups = self._groups(pieces, starts, spans)
        hidden = self.embed(torch.tensor(ids, device=self.device))
        cos, sin = self.rotary(hidden, positions.to(self.device).unsqueeze(0))
        cos, sin = cos[0], sin[0]
        total = hidden.shape[0]
        keeping = [p.kv.keys_values is not None for p in pieces]
        new_keys_values = []  # per layer [k/v, token, kv_head, head_dim], written to the pieces after the pass
        for index, layer in enumerate(self.layers):
            attention = layer.self_attn
            x = layer.input_layernorm(hidden)
            q = attention.q_proj(x).view(total, self.num_heads, self.head_dim)
            k = attention.k_proj(x).view(total, self.num_kv_heads, self.head_dim)
            v = attention.v_proj(x).view(total, self.num_kv_heads, self.head_dim)
            if self.has_qk_norm:
                q, k = attention.q_norm(q), attention.k_norm(k)
            q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)
            new = torch.stack((k, v))
            if any(keeping):
                new_keys_values.append(new)
            attended = torch.empty((total, self.num_heads * self.head_dim), dtype=hidden.dtype, device=self.device)
            q = q * self.scale
            for group in groups:
                group.attend(self, index, q, new, attended)
            hidden = hidden + attention.o_proj(attended)
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        final = self.norm(hidden)
        if new_keys_values:
            # [layer, k/v, token, kv_head, head_dim] -> each piece's [layer, k/v, kv_head, position, head_dim]
            new_keys_values = torch.stack(new_keys_values).transpose(2, 3)
        for piece, start, (a, b), keeps in zip(pieces, starts, spans, keeping):
            if keeps:
                piece.kv.keys_values[:, :, :, start : start + b - a] = new_keys_values[:, :, :, a:b]
            piece.kv.hidden[start : start + b - a] = final[a:b]
            piece.kv.length = start + b - a

    def _groups(self, pieces: list[Piece], starts: list[int], spans: list[tuple[int, int]]) -> list["_Group"]:
        """Pieces that share a prefix attend together; a piece without one is a group of its own."""
        by_prefix: dict[int, list[int]] = {}
        for number, piece in enumerate(pieces):
            by_prefix.setdefault(id(piece.prefix) if piece.prefix is not None else -1 - number, []).append(number)
        return [_Group([pieces[i] for i in members], [starts[i] for i in members], [spans[i] for i in members],
                       self.device) for members in by_prefix.values()]


class _Group:
    """Pieces sharing one prefix, laid out as a padded batch [piece, new token] for attention: each
    new token attends to the whole prefix (one copy, broadcast over the pieces) and causally to its
    own piece's tokens."""

    def __init__(self, pieces: list[Piece], starts: list[int], spans: list[tuple[int, int]], device):
        self.pieces, self.starts = pieces, starts
        counts = [b - a for a, b in spans]
        self.width = max(counts)  # new tokens per piece, padded
        self.length = max(s + c for s, c in zip(starts, counts))  # own tokens per piece, padded
        rows = len(pieces)
        # Where each (piece, new token) is in the packed pass; padding points at token 0 and is dropped.
        slot = torch.arange(self.width)
        self.valid = (slot[None, :] < torch.tensor(counts)[:, None]).to(device)
        self.token = (torch.tensor([a for a, _ in spans])[:, None] + slot[None, :]).to(device) * self.valid
        own_position = torch.tensor(starts)[:, None] + slot[None, :]
        # Query j of a piece (own position start + j) sees its own tokens 0 .. start + j.
        self.later = (torch.arange(self.length)[None, None, :] > own_position[:, :, None]).to(device)
        # Cached tokens of each piece, and new ones, as (piece, position) indices into the padded layout.
        self.cached_rows = torch.cat([torch.full((s,), r) for r, s in enumerate(starts)]).to(device)
        self.cached_positions = torch.cat([torch.arange(s) for s in starts]).to(device)
        self.new_rows = torch.arange(rows, device=device)[:, None].expand(rows, self.width)[self.valid]
        self.new_positions = own_position.to(device)[self.valid]
        self.prefix = pieces[0].prefix

    def attend(self, reader: CausalReader, layer: int, q: torch.Tensor, new: torch.Tensor,
               attended: torch.Tensor) -> None:
        """Write into `attended` [token, heads * head_dim] the attention output of this group's tokens;
        q [token, heads, head_dim] (scaled), new [k/v, token, kv_head, head_dim] of the whole pass."""
        rows, width, length = len(self.pieces), self.width, self.length
        kv_heads, group, dim = reader.num_kv_heads, reader.group, reader.head_dim
        own = new.new_zeros((rows, length, 2, kv_heads, dim))
        if len(self.cached_rows):
            cached = torch.cat([p.kv.keys_values[layer, :, :, :s].permute(2, 0, 1, 3)
                                for p, s in zip(self.pieces, self.starts) if s])
            own[self.cached_rows, self.cached_positions] = cached
        own[self.new_rows, self.new_positions] = new[:, self.token[self.valid]].transpose(0, 1)
        own = own.permute(2, 3, 0, 1, 4)  # [k/v, kv_head, piece, position, head_dim]
        # Each kv head serves `group` query heads: one product per kv head over all their queries. The
        # prefix is one [kv_head, prefix, head_dim] tensor for all pieces: their queries are stacked
        # against it rather than it being repeated for each piece.
        queries = q[self.token].view(rows, width, kv_heads, group, dim).permute(2, 0, 3, 1, 4)
        queries = queries.reshape(kv_heads, rows, group * width, dim)
        scores = (queries @ own[0].transpose(-1, -2)).float()
        scores.view(kv_heads, rows, group, width, length).masked_fill_(self.later[None, :, None], float("-inf"))
        if self.prefix is None:
            out = scores.softmax(dim=-1).to(q.dtype) @ own[1]
        else:
            prefix = self.prefix.keys_values[layer, :, :, : self.prefix.length]
            queries = queries.reshape(kv_heads, rows * group * width, dim)
            # One softmax over the prefix's scores and the piece's own, kept as two tensors (joining
            # them would copy the largest tensors here): both shifted by the same maximum, the
            # weighted sums added, and divided once by the sum of both parts' weights.
            prefix_scores = (queries @ prefix[0].transpose(-1, -2)).float()
            own_scores = scores.view(kv_heads, rows * group * width, length)
            top = torch.maximum(prefix_scores.amax(dim=-1, keepdim=True), own_scores.amax(dim=-1, keepdim=True))
            prefix_scores.sub_(top).exp_()
            own_scores.sub_(top).exp_()
            total = prefix_scores.sum(dim=-1, keepdim=True) + own_scores.sum(dim=-1, keepdim=True)
            out = (prefix_scores.to(q.dtype) @ prefix[1]).view(kv_heads, rows, group * width, dim)
            out += own_scores.to(q.dtype).view(kv_heads, rows, group * width, length) @ own[1]
            out = out.view(kv_heads, rows * group * width, dim).div_(total.to(q.dtype))
        out = out.view(kv_heads, rows, group, width, dim).permute(1, 3, 0, 2, 4).reshape(rows, width, -1)
        attended[self.token[self.valid]] = out[self.valid]
