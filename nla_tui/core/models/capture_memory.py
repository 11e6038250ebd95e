"""How much accelerator memory a chunked capture needs, and the chunk that fits a budget.

Config arithmetic only (no torch): a test checks the 27B shape at 20,000 tokens.
The budget is the explain-all one (Engine.explain_batch_size): half of the card's free
memory, so a long capture never needs more than explain-all is allowed to take.
"""

from __future__ import annotations

from ..errors import InputError

GiB = 1 << 30
CHUNKS = (2048, 1024, 512, 256, 128, 64)
BUDGET_FRACTION = 0.5  # as explain-all: half the free memory, the rest for the other models' work


def capture_bytes(cfg, n_tokens: int, chunk: int, dtype_bytes: int = 2) -> int:
    """Peak bytes beyond the weights for capturing n_tokens in chunks of `chunk`:
    the KV cache (full on global layers, window + chunk on sliding ones), the final
    hidden states kept for the top-k pass, one chunk's transients (MLP, attention
    scores as if materialised: the worst case for sdpa with a mask) and one block of
    full-vocabulary logits."""
    chunk = min(chunk, n_tokens)
    layers = cfg.num_hidden_layers
    types = getattr(cfg, "layer_types", None) or ["full_attention"] * layers
    n_global = sum(t != "sliding_attention" for t in types)
    window = getattr(cfg, "sliding_window", None) or n_tokens
    kvh = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    per_pos = 2 * kvh * head_dim * dtype_bytes
    kv = per_pos * (n_global * n_tokens + (layers - n_global) * min(n_tokens, window + chunk))
    kept = n_tokens * cfg.hidden_size * dtype_bytes
    mlp = chunk * (3 * cfg.intermediate_size + 4 * cfg.hidden_size) * dtype_bytes
    scores = cfg.num_attention_heads * chunk * n_tokens * 4
    logits = 2 * 256 * cfg.vocab_size * 4
    return kv + kept + mlp + scores + logits


def chunk_for_budget(cfg, n_tokens: int, budget: int) -> int:
    """The largest chunk whose capture fits `budget` bytes; a clear error if none does."""
    for c in CHUNKS:
        if capture_bytes(cfg, n_tokens, c) <= budget:
            return c
    need = capture_bytes(cfg, n_tokens, CHUNKS[-1])
    raise InputError(f"Capturing {n_tokens:,} tokens needs about {need / GiB:.1f} GiB of GPU memory even in "
                     f"chunks of {CHUNKS[-1]}, but {budget / GiB:.1f} GiB is available for it. Shorten the "
                     f"conversation, or free the card (place the AV/AR elsewhere with --devices).")


def gpu_budget(device) -> int:
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    return int(free * BUDGET_FRACTION)
