"""A fast decode path for Llama-family Hugging Face models.

Norms, MLPs, rotary tables, embeddings and the LM head are the Hugging Face modules themselves;
only attention is written here, because it is what makes the path fast:
- the prompt is prefilled once and its keys/values are shared by every row (one copy in memory);
- rows keep their own keys/values in a pre-allocated buffer written in place, never grown;
- in batch-invariant mode, every matrix product sees a fixed number of rows (`row_block`), so a
  row's logits do not depend on which other rows are in the batch.
"""
import torch
import torch.nn.functional as F

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


class UnsupportedModel(ValueError):
    pass


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


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

    def kv_bytes_per_token(self) -> int:
        element = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * element

    def padded_rows(self, rows: int) -> int:
        """Rows the matrix products run on: a multiple of row_block in batch-invariant mode."""
        if not self.row_block:
            return rows
        return -(-rows // self.row_block) * self.row_block

    def new_row_cache(self, rows: int, capacity: int) -> torch.Tensor:
        """Keys and values of generated tokens: [layer, k/v, row, kv_head, position, head_dim]."""
        return torch.empty(
            (self.num_layers, 2, rows, self.num_kv_heads, capacity, self.head_dim), dtype=self.dtype, device=self.device
        )

    def _project_qkv(self, attention, hidden: torch.Tensor, cos, sin, token_axis_shape):
        """q [.., heads, head_dim] and k, v [.., kv_heads, head_dim], rotated."""
        q = attention.q_proj(hidden).view(*token_axis_shape, self.num_heads, self.head_dim)
        k = attention.k_proj(hidden).view(*token_axis_shape, self.num_kv_heads, self.head_dim)
        v = attention.v_proj(hidden).view(*token_axis_shape, self.num_kv_heads, self.head_dim)
        if self.has_qk_norm:
            q, k = attention.q_norm(q), attention.k_norm(k)
        return _apply_rotary(q, cos, sin), _apply_rotary(k, cos, sin), v

    def _rotary_tables(self, hidden: torch.Tensor, positions: torch.Tensor):
        cos, sin = self.rotary(hidden, positions.unsqueeze(0))
        # [1, tokens, head_dim] -> [tokens, 1, head_dim], broadcast over heads.
        return cos[0].unsqueeze(1), sin[0].unsqueeze(1)

    @torch.inference_mode()
    def prefill(self, prompt_ids: torch.Tensor):
        """Run the prompt once. Returns its keys/values [layer, k/v, kv_head, token, head_dim] and the
        logits of the next token [vocab]."""
        tokens = prompt_ids.shape[0]
        hidden = self.embed(prompt_ids.to(self.device))
        cos, sin = self._rotary_tables(hidden, torch.arange(tokens, device=self.device))
        prefix = torch.empty(
            (self.num_layers, 2, self.num_kv_heads, tokens, self.head_dim), dtype=self.dtype, device=self.device
        )
        for index, layer in enumerate(self.layers):
            attention = layer.self_attn
            q, k, v = self._project_qkv(attention, layer.input_layernorm(hidden), cos, sin, (tokens,))
            prefix[index, 0] = k.transpose(0, 1)
            prefix[index, 1] = v.transpose(0, 1)
            out = F.scaled_dot_product_attention(
                q.transpose(0, 1), prefix[index, 0], prefix[index, 1], is_causal=True, scale=self.scale, enable_gqa=True
            )
            hidden = hidden + attention.o_proj(out.transpose(0, 1).reshape(tokens, -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return prefix, self.lm_head(self.norm(hidden[-1:]))[0]

    @torch.inference_mode()
    def decode_step(
        self, tokens: torch.Tensor, prefix: torch.Tensor, rows: torch.Tensor, slot: int, prompt_length: int
    ) -> torch.Tensor:
        """Feed one token per row at response slot `slot`; write its keys/values into `rows` in place.

        `tokens` has padded_rows(real rows) entries; rows past `rows.shape[2]` are padding that only
        keeps the matrix shapes fixed. Returns logits [len(tokens), vocab]."""
        total = tokens.shape[0]
        real = rows.shape[2]
        block = self.row_block or total
        hidden = self.embed(tokens)
        cos, sin = self._rotary_tables(hidden, torch.tensor([prompt_length + slot], device=self.device))
        for index, layer in enumerate(self.layers):
            attention = layer.self_attn
            for start in range(0, total, block):
                stop = start + block
                part = hidden[start:stop]
                q, k, v = self._project_qkv(attention, layer.input_layernorm(part), cos, sin, (part.shape[0],))
                real_stop = min(stop, real)
                if real_stop > start:
                    rows[index, 0, start:real_stop, :, slot] = k[: real_stop - start]
                    rows[index, 1, start:real_stop, :, slot] = v[: real_stop - start]
                attended = self._attend(q, prefix[index], rows[index, :, start:real_stop, :, : slot + 1])
                part += attention.o_proj(attended)
                part += layer.mlp(layer.post_attention_layernorm(part))
        logits = torch.empty((total, self.vocab_size), dtype=self.dtype, device=self.device)
        for start in range(0, total, block):
            logits[start : start + block] = self.lm_head(self.norm(hidden[start : start + block]))
        return logits

    def _attend(self, q: torch.Tensor, prefix: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        """One query token per row against the shared prompt and the row's own tokens.

        q [block, heads, head_dim]; prefix [k/v, kv_head, prompt, head_dim];
        own [k/v, real rows <= block, kv_head, slots, head_dim]."""
        block, real = q.shape[0], own.shape[1]
        grouped = q.view(block, self.num_kv_heads, self.group, self.head_dim)
        # The prompt is shared: one matrix product per kv head over all rows' queries.
        flat = grouped.transpose(0, 1).reshape(self.num_kv_heads, block * self.group, self.head_dim)
        prompt_scores = (flat @ prefix[0].transpose(-1, -2)).view(self.num_kv_heads, block, self.group, -1)
        prompt_scores = prompt_scores.transpose(0, 1).float() * self.scale
        own_scores = (grouped[:real] @ own[0].transpose(-1, -2)).float() * self.scale
        if real < block:
            # Padding rows have no tokens of their own; they attend to the prompt alone.
            filler = own_scores.new_full((block - real, *own_scores.shape[1:]), float("-inf"))
            own_scores = torch.cat((own_scores, filler))
        weights = torch.cat((prompt_scores, own_scores), dim=-1).softmax(dim=-1).to(q.dtype)
        prompt_weights, own_weights = weights.split([prompt_scores.shape[-1], own_scores.shape[-1]], dim=-1)
        out = (
            (prompt_weights.transpose(0, 1).reshape(self.num_kv_heads, block * self.group, -1) @ prefix[1])
            .view(self.num_kv_heads, block, self.group, self.head_dim)
            .transpose(0, 1)
        )
        out[:real] += own_weights[:real] @ own[1]
        return out.reshape(block, self.num_heads * self.head_dim)
