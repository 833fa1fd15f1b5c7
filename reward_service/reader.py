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
    (after the final norm, ready for the output head). Positions [0, length) hold real tokens."""

    def __init__(self, reader: "CausalReader", capacity: int = 16):
        self._reader = reader
        self.keys_values = reader.new_keys_values(capacity)
        self.hidden = reader.new_hidden(capacity)
        self.length = 0

    def reserve(self, length: int) -> None:
        capacity = self.hidden.shape[0]
        if length <= capacity:
            return
        capacity = max(length, 2 * capacity)
        keys_values, hidden = self._reader.new_keys_values(capacity), self._reader.new_hidden(capacity)
        keys_values[..., : self.length, :] = self.keys_values[..., : self.length, :]
        hidden[: self.length] = self.hidden[: self.length]
        self.keys_values, self.hidden = keys_values, hidden

    def truncate(self, length: int) -> None:
        self.length = min(self.length, length)

    @property
    def nbytes(self) -> int:
        return (self.keys_values.numel() * self.keys_values.element_size()
                + self.hidden.numel() * self.hidden.element_size())


@dataclass
class Piece:
    """The next `count` tokens of a sequence, from `ids[kv.length]` on, to be read after `prefix`."""
    kv: SequenceKV
    ids: list[int]
    count: int
    prefix: SequenceKV | None = None


class CausalReader:
    """Runs pieces of many sequences in one forward pass: the projections and MLPs over all their
    tokens packed together (no padding), attention per sequence against its prefix and itself."""

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
        """Read each piece's tokens; their keys/values and final hidden states land in the piece's
        `kv`, whose `length` then grows by `count`."""
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
        hidden = self.embed(torch.tensor(ids, device=self.device))
        cos, sin = self.rotary(hidden, positions.to(self.device).unsqueeze(0))
        cos, sin = cos[0], sin[0]
        total = hidden.shape[0]
        # Query i of a piece (at own position start + i) sees its own keys 0 .. start + i.
        later_keys = [torch.arange(start + p.count, device=self.device)[None, :]
                       > torch.arange(start, start + p.count, device=self.device)[:, None]
                       for p, start in zip(pieces, starts)]
        for index, layer in enumerate(self.layers):
            attention = layer.self_attn
            x = layer.input_layernorm(hidden)
            q = attention.q_proj(x).view(total, self.num_heads, self.head_dim)
            k = attention.k_proj(x).view(total, self.num_kv_heads, self.head_dim)
            v = attention.v_proj(x).view(total, self.num_kv_heads, self.head_dim)
            if self.has_qk_norm:
                q, k = attention.q_norm(q), attention.k_norm(k)
            q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)
            q = q * self.scale
            attended = torch.empty((total, self.num_heads * self.head_dim), dtype=hidden.dtype, device=self.device)
            for piece, start, offset, (a, b), later in zip(pieces, starts, offsets, spans, later_keys):
                own = piece.kv.keys_values[index]
                own[0, :, start : start + b - a] = k[a:b].transpose(0, 1)
                own[1, :, start : start + b - a] = v[a:b].transpose(0, 1)
                prefix = None if piece.prefix is None else piece.prefix.keys_values[index, :, :, :offset]
                attended[a:b] = self._attend(q[a:b], prefix, own[:, :, : start + b - a], later)
            hidden = hidden + attention.o_proj(attended)
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        final = self.norm(hidden)
        for piece, start, (a, b) in zip(pieces, starts, spans):
            piece.kv.hidden[start : start + b - a] = final[a:b]
            piece.kv.length = start + b - a

    def _attend(self, q: torch.Tensor, prefix: torch.Tensor | None, own: torch.Tensor,
                later: torch.Tensor) -> torch.Tensor:
        """Queries (already scaled) of one sequence's new tokens against its prefix (all visible) and its
        own tokens, of which `later` [new, own tokens] marks those after each query.
        q [new, heads, head_dim]; prefix [k/v, kv_head, prefix_len, head_dim] or None;
        own [k/v, kv_head, own tokens, head_dim]. Returns [new, heads * head_dim]."""
        new, seen = q.shape[0], own.shape[2]
        kv_heads, group, dim = self.num_kv_heads, self.group, self.head_dim
        # Each kv head serves `group` query heads: one product per kv head over all their queries.
        grouped = q.view(new, kv_heads, group, dim).permute(1, 2, 0, 3).reshape(kv_heads, group * new, dim)
        scores = (grouped @ own[0].transpose(-1, -2)).float()
        scores.view(kv_heads, group, new, seen).masked_fill_(later, float("-inf"))
        if prefix is not None:
            scores = torch.cat(((grouped @ prefix[0].transpose(-1, -2)).float(), scores), dim=-1)
        weights = scores.softmax(dim=-1).to(q.dtype)
        if prefix is None:
            out = weights @ own[1]
        else:
            prefix_weights, own_weights = weights.split([prefix.shape[2], seen], dim=-1)
            out = prefix_weights @ prefix[1] + own_weights @ own[1]
        return out.view(kv_heads, group, new, dim).permute(2, 0, 1, 3).reshape(new, kv_heads * group * dim)

