"""The static KV cache and the decode attention behind fast_decode.

Kept apart from the decode loop so each module stays small; nothing here is
public API (use nla_tui.core.models.fast_decode).
"""

from __future__ import annotations

import sys

import torch

ATTN_NAME = "nla_static_decode"
ORIG_IMPL: dict[int, str] = {}  # id(text config) -> the model's own attention implementation


class StaticKV:
    """Minimal transformers-compatible cache: one [B, kv_heads, L, head_dim] buffer
    per layer, written at the positions in `self.write_idx` (a device tensor, so a
    captured graph reads the current position without re-capture)."""

    is_compileable = True

    def __init__(self, n_layers: int, batch: int, max_len: int):
        self.n_layers = n_layers
        self.batch = batch
        self.max_len = max_len
        self.keys: list[torch.Tensor] = []  # filled by the runner, [batch, kv_heads, max_len, head_dim]
        self.values: list[torch.Tensor] = []
        self.write_idx: torch.Tensor | None = None
        self.rows: slice = slice(None)  # prefix prefill writes row 0 only
        self.seen = 0

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        k = self.keys[layer_idx][self.rows]
        v = self.values[layer_idx][self.rows]
        idx = self.write_idx.to(k.device)  # no-op unless layers are split over GPUs
        k.index_copy_(2, idx, key_states)
        v.index_copy_(2, idx, value_states)
        return k, v

    # Called by some models only when position_ids is missing; we always pass them.
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen

    def __len__(self) -> int:
        return self.n_layers


def decode_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """One query position against the static cache, grouped-query heads packed into the
    matmul. transformers' sdpa path with a mask repeats K/V per query head instead
    (`repeat_kv`): at batch 160 those copies were ~50 of 137 ms per step on an H100.
    Prefill (several query positions) goes to the model's own implementation."""
    orig = ORIG_IMPL.get(id(module.config), "sdpa")
    if query.shape[2] != 1 or dropout:
        if orig == "eager":
            fn = sys.modules[type(module).__module__].eager_attention_forward
        else:
            from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

            fn = ALL_ATTENTION_FUNCTIONS[orig]
        return fn(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    b, h, _, d = query.shape
    kvh = key.shape[1]
    q = query.reshape(b, kvh, h // kvh, d)  # head i reads kv head i // groups, as repeat_kv does
    scores = torch.matmul(q, key.transpose(-1, -2)) * (scaling if scaling is not None else d ** -0.5)
    cap = getattr(module, "attn_logit_softcapping", None)
    if cap:
        scores = torch.tanh(scores / cap) * cap
    if attention_mask is not None:  # [1, 1, 1, L]: bool (attend) or additive float
        m = attention_mask[..., : key.shape[-2]]
        scores = scores.masked_fill(~m, torch.finfo(scores.dtype).min) if m.dtype == torch.bool else scores + m
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(probs, value).reshape(b, h, 1, d)
    return out.transpose(1, 2).contiguous(), None


def register_attention() -> None:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if ATTN_NAME not in ALL_ATTENTION_FUNCTIONS:
        ALL_ATTENTION_FUNCTIONS[ATTN_NAME] = decode_attention
