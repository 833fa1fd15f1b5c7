"""A fast decode path for Llama-family Hugging Face models.

Norms, MLPs, rotary tables, embeddings and the LM head are the Hugging Face modules themselves;
only attention is written here, because it is what makes the path fast:
- the prompt is prefilled once (in chunks) and its keys/values are shared by every row;
- rows keep their own keys/values in a pre-allocated buffer written in place, never grown;
- one decode step serves the rows of several sessions: the matrix products run over all of them,
  attention runs per session against that session's prompt and rows;
- in batch-invariant mode, every matrix product sees a fixed number of rows (`row_block`), so a
  row's logits do not depend on which other rows, of any session, are in the batch.
"""
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .kv_cache import RowKVCache

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
# Rows per matrix product in batch-invariant mode. Measured on a 2-core CPU with SmolLM2-135M:
# 32 costs ~15 % of throughput at 128 rows (16 costs ~30 %) but pads a batch of 8 to 32.
DEFAULT_ROW_BLOCK = 32


class UnsupportedModel(ValueError):
    pass


@dataclass(frozen=True)
class Segment:
    """One session's rows in a decode step: rows offset .. offset + rows of the batch."""

    offset: int
    rows: int
    prefix: torch.Tensor  # the session's prompt keys/values
    cache: RowKVCache  # its rows' own keys/values
    slot: int  # response position the step writes


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


def _call(x: torch.Tensor, module) -> torch.Tensor:
    return module(x)


class CausalDecoder:
    """Prefill and batched decode steps over a Hugging Face Llama-family causal LM."""

    def __init__(self, hf_model, row_block: int = 0):
        config = hf_model.config
        if config.model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModel(
                f"model type {config.model_type!r} is not supported by the generator; "
                f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        base = hf_model.model
        self.embed = base.embed_tokens
        self.layers = list(base.layers)
        self.norm = base.norm
        self.rotary = base.rotary_emb
        self.lm_head = hf_model.lm_head
        self.num_layers = len(self.layers)
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.group = self.num_heads // self.num_kv_heads
        first_attention = self.layers[0].self_attn
        self.scale = getattr(first_attention, "scaling", self.head_dim**-0.5)
        self.has_qk_norm = hasattr(first_attention, "q_norm")
        self.max_context = getattr(config, "max_position_embeddings", None) or 2048
        self.vocab_size = config.vocab_size
        self.row_block = row_block
        weight = self.lm_head.weight
        self.device, self.dtype = weight.device, weight.dtype
        # The dense parts of a decode step (everything but attention), one callable per layer so
        # that compile.py can replace each with a compiled version.
        self.layer_inputs = [functools.partial(self._layer_input, layer) for layer in self.layers]
        self.layer_outputs = [functools.partial(self._layer_output, layer) for layer in self.layers]
        self.logits = self._logits
        self.step_begin = lambda: None

    def kv_bytes_per_token(self) -> int:
        element = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * element

    def padded_rows(self, rows: int) -> int:
        """Rows the matrix products run on: a multiple of row_block in batch-invariant mode."""
        if not self.row_block:
            return rows
        return -(-rows // self.row_block) * self.row_block

    def _project_qkv(self, attention, hidden: torch.Tensor, cos, sin, linear):
        """q [tokens, heads, head_dim] and k, v [tokens, kv_heads, head_dim], rotated."""
        tokens = hidden.shape[0]
        q = linear(hidden, attention.q_proj).view(tokens, self.num_heads, self.head_dim)
        k = linear(hidden, attention.k_proj).view(tokens, self.num_kv_heads, self.head_dim)
        v = linear(hidden, attention.v_proj).view(tokens, self.num_kv_heads, self.head_dim)
        if self.has_qk_norm:
            q, k = attention.q_norm(q), attention.k_norm(k)
        return _apply_rotary(q, cos, sin), _apply_rotary(k, cos, sin), v

    def _linear(self, x: torch.Tensor, module) -> torch.Tensor:
        """`module(x)`; in batch-invariant mode as a batch of products of exactly row_block rows each,
        so the kernel, and hence every row's result, is the same whatever the number of rows."""
        if not self.row_block:
            return module(x)
        blocks = x.shape[0] // self.row_block
        out = torch.bmm(x.view(blocks, self.row_block, -1), module.weight.t().expand(blocks, -1, -1))
        out = out.view(x.shape[0], -1)
        return out if module.bias is None else out + module.bias

    def _mlp(self, mlp, x: torch.Tensor) -> torch.Tensor:
        if not self.row_block:
            return mlp(x)
        return self._linear(mlp.act_fn(self._linear(x, mlp.gate_proj)) * self._linear(x, mlp.up_proj), mlp.down_proj)

    def _rotary_tables(self, hidden: torch.Tensor, positions: torch.Tensor):
        cos, sin = self.rotary(hidden, positions.unsqueeze(0))
        # [1, tokens, head_dim] -> [tokens, 1, head_dim], broadcast over heads.
        return cos[0].unsqueeze(1), sin[0].unsqueeze(1)

    def new_prefix(self, tokens: int) -> torch.Tensor:
        """Keys and values of a prompt: [layer, k/v, kv_head, token, head_dim], shared by its rows."""
        return torch.empty(
            (self.num_layers, 2, self.num_kv_heads, tokens, self.head_dim), dtype=self.dtype, device=self.device
        )

    @torch.inference_mode()
    def prefill_chunk(self, chunk_ids: torch.Tensor, prefix: torch.Tensor, start: int) -> torch.Tensor:
        """Run prompt tokens start .. start + len(chunk_ids) against the ones before them, writing
        their keys/values into `prefix`. Returns the logits of the token after the chunk [vocab].

        A prompt is prefilled in chunks so that a long one does not stall other sessions'
        decoding; its chunks depend only on its length, so its numbers never depend on the load."""
        tokens = chunk_ids.shape[0]
        end = start + tokens
        hidden = self.embed(chunk_ids.to(self.device))
        cos, sin = self._rotary_tables(hidden, torch.arange(start, end, device=self.device))
        # Chunk query i sees the prompt up to start + i; SDPA's is_causal would align it top-left.
        mask = None if start == 0 else torch.ones(tokens, end, dtype=torch.bool, device=self.device).tril(start)
        for index, layer in enumerate(self.layers):
            attention = layer.self_attn
            q, k, v = self._project_qkv(attention, layer.input_layernorm(hidden), cos, sin, _call)
            prefix[index, 0, :, start:end] = k.transpose(0, 1)
            prefix[index, 1, :, start:end] = v.transpose(0, 1)
            out = F.scaled_dot_product_attention(
                q.transpose(0, 1), prefix[index, 0, :, :end], prefix[index, 1, :, :end], attn_mask=mask,
                is_causal=mask is None, scale=self.scale, enable_gqa=True,
            )
            hidden = hidden + attention.o_proj(out.transpose(0, 1).reshape(tokens, -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return self.lm_head(self.norm(hidden[-1:]))[0]

    @torch.inference_mode()
    def decode_step(self, tokens: torch.Tensor, positions: torch.Tensor, segments: "list[Segment]") -> torch.Tensor:
        """Feed one token per row, for the rows of several sessions at once.

        `tokens` and `positions` (absolute, prompt included) have padded_rows(real rows) entries;
        rows past the segments are padding that only keeps the matrix shapes fixed. Each segment
        is one session's consecutive rows: they attend to that session's prompt and own tokens,
        and their new keys/values are written into its cache. Returns logits [len(tokens), vocab]."""
        self.step_begin()
        hidden = self.embed(tokens)
        cos, sin = self._rotary_tables(hidden, positions)
        for index in range(self.num_layers):
            q, k, v = self.layer_inputs[index](hidden, cos, sin)
            attended = q.new_zeros(q.shape[0], self.num_heads * self.head_dim)
            for segment in segments:
                rows = slice(segment.offset, segment.offset + segment.rows)
                segment.cache.write(index, segment.slot, k[rows], v[rows])
                own = segment.cache.keys_values(index, segment.slot + 1)
                attended[rows] = self._attend(self._pad_rows(q[rows]), segment.prefix[index], own)[: segment.rows]
            hidden = self.layer_outputs[index](hidden, attended)
        return self.logits(hidden)

    def _layer_input(self, layer, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        return self._project_qkv(layer.self_attn, layer.input_layernorm(hidden), cos, sin, self._linear)

    def _layer_output(self, layer, hidden: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        hidden = hidden + self._linear(attended, layer.self_attn.o_proj)
        return hidden + self._mlp(layer.mlp, layer.post_attention_layernorm(hidden))

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._linear(self.norm(hidden), self.lm_head)

    def _pad_rows(self, x: torch.Tensor) -> torch.Tensor:
        """`x` with zero rows appended up to padded_rows: one session's queries shaped as if alone."""
        padded = self.padded_rows(x.shape[0])
        if padded == x.shape[0]:
            return x
        return torch.cat((x, x.new_zeros(padded - x.shape[0], *x.shape[1:])))

    def _attend(self, q: torch.Tensor, prefix: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        """One query token per row against the shared prompt and the row's own tokens.

        q [rows, heads, head_dim]; prefix [k/v, kv_head, prompt, head_dim];
        own [k/v, real rows <= rows, kv_head, slots, head_dim]."""
        total, real = q.shape[0], own.shape[1]
        block = self.row_block or total
        blocks, heads, group, dim = total // block, self.num_kv_heads, self.group, self.head_dim
        grouped = q.view(total, heads, group, dim)
        # The prompt is shared: per kv head, one product over a block's queries, [block*group, dim].
        stacked = grouped.view(blocks, block, heads, group, dim).transpose(1, 2).reshape(blocks, heads, block * group, dim)
        prompt_scores = (stacked @ prefix[0].transpose(-1, -2)).float() * self.scale
        own_scores = (grouped[:real] @ own[0].transpose(-1, -2)).float() * self.scale
        if real < total:
            # Padding rows have no tokens of their own; they attend to the prompt alone.
            filler = own_scores.new_full((total - real, *own_scores.shape[1:]), float("-inf"))
            own_scores = torch.cat((own_scores, filler))
        prompt_scores = prompt_scores.view(blocks, heads, block, group, -1).transpose(1, 2).reshape(total, heads, group, -1)
        weights = torch.cat((prompt_scores, own_scores), dim=-1).softmax(dim=-1).to(q.dtype)
        prompt_weights, own_weights = weights.split([prompt_scores.shape[-1], own_scores.shape[-1]], dim=-1)
        prompt_weights = prompt_weights.reshape(blocks, block, heads, group, -1).transpose(1, 2)
        out = (prompt_weights.reshape(blocks, heads, block * group, -1) @ prefix[1])
        out = out.view(blocks, heads, block, group, dim).transpose(1, 2).reshape(total, heads, group, dim)
        out[:real] += own_weights[:real] @ own[1]
        return out.reshape(total, self.num_heads * dim)
