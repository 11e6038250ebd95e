"""Fuse the decode step's elementwise chains with torch.compile (issue 24, part 2).

A batch-1 decode step of a 62-layer Gemma 3 is ~5,500 kernels; ~5,100 are small elementwise
ones (fp32 RMSNorms: cast, square, mean, rsqrt, scale, cast back; the rotary embedding), ~2 µs
each. Compiling each RMSNorm's forward and transformers' `apply_rotary_pos_emb` turns every
chain into one Triton kernel, and fast_decode then captures those kernels in its CUDA graph as
before. One compiled body serves every layer (parameters are graph inputs), so compiling costs
seconds (3.4 s with the capture on an H100) and inductor keeps the result in its on-disk cache
for the next process. Measured there: 25.3 -> 18.1 ms per batch-1 step (bench gpu compile_probe).

Only on CUDA, only where Triton can compile; anything that fails leaves the model as it was.
NLA_TUI_FUSE=0 turns it off.
"""

from __future__ import annotations

import logging
import os
import sys

import torch

log = logging.getLogger(__name__)
_ROPE: dict[str, object] = {}  # module name -> the original apply_rotary_pos_emb


def enabled() -> bool:
    return os.environ.get("NLA_TUI_FUSE", "1") != "0"


def fuse(model) -> str | None:
    """Compile `model`'s RMSNorms and its modeling module's rotary function. Idempotent.
    Returns None when fused, else why not (the model then runs unfused, as before)."""
    if getattr(model, "_nla_fused", False):
        return None
    if not enabled():
        return "NLA_TUI_FUSE=0"
    dev = model.get_input_embeddings().weight.device
    if dev.type != "cuda":
        return "not on CUDA"
    try:
        import torch._dynamo
        import triton  # noqa: F401  (inductor's GPU code generator)
    except Exception as e:
        return f"no Triton ({type(e).__name__})"
    torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
    norms = [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")]
    for m in norms:
        m.forward = torch.compile(m.forward, dynamic=False)
    mod = sys.modules.get(type(model).__module__)
    rope = getattr(mod, "apply_rotary_pos_emb", None)
    if rope is not None and mod.__name__ not in _ROPE:
        _ROPE[mod.__name__] = rope
        mod.apply_rotary_pos_emb = torch.compile(rope, dynamic=False)
    model._nla_fused = True
    return None


def unfuse(model) -> None:
    """Back to the plain modules (the rotary function stays compiled while any model uses it)."""
    for m in model.modules():
        if type(m).__name__.endswith("RMSNorm"):
            m.__dict__.pop("forward", None)
    model._nla_fused = False


def restore_rope() -> None:
    for name, fn in list(_ROPE.items()):
        setattr(sys.modules[name], "apply_rotary_pos_emb", fn)
        del _ROPE[name]
