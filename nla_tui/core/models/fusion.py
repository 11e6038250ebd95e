"""Fuse the decode step's elementwise chains with torch.compile (issue 24, part 2).

A batch-1 decode step of a 62-layer Gemma 3 is ~5,500 kernels; ~5,100 are small elementwise
ones (fp32 RMSNorms: cast, square, mean, rsqrt, scale, cast back; the rotary embedding), ~2 µs
each. Compiling each RMSNorm's forward and transformers' `apply_rotary_pos_emb` turns every
chain into one Triton kernel, and fast_decode then captures those kernels in its CUDA graph as
before. One compiled body serves every layer (parameters are graph inputs), so compiling costs
seconds (3.4 s with the capture on an H100) and inductor keeps the result in its on-disk cache
for the next process. Measured there: 25.3 -> 18.1 ms per batch-1 step (bench gpu compile_probe).

Only decode shapes (one new position, sequence length 1) go through the compiled code; a prefill
runs the plain modules. `torch.compile(dynamic=False)` compiles once per input shape, and every
prefill (each prompt length, each batch, the subject's capture, the AR's scoring) is a new shape
that gains nothing from fusing (one pass, large kernels): run 3 on an H100 spent ~6.8 s of a
20.4 s explain-all compiling prefill shapes, and the shapes hit dynamo's recompile limit (after
which it silently stops compiling). Decode shapes are a few per batch bucket (layer norm, q-norm,
k-norm), well under the limit.

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


def is_decode(x: torch.Tensor) -> bool:
    """One new position: hidden states [b, 1, d], or per-head [b, heads, 1, head_dim]."""
    return x.dim() >= 3 and x.shape[-2] == 1


def decode_only(compiled, plain):
    """`compiled` for decode shapes, `plain` for everything else (see the module's docstring)."""
    def forward(x, *args, **kwargs):
        return (compiled if is_decode(x) else plain)(x, *args, **kwargs)
    forward.__wrapped__ = plain
    return forward


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
        m.forward = decode_only(torch.compile(m.forward, dynamic=False), m.forward)
    mod = sys.modules.get(type(model).__module__)
    rope = getattr(mod, "apply_rotary_pos_emb", None)
    if rope is not None and mod.__name__ not in _ROPE:
        _ROPE[mod.__name__] = rope
        mod.apply_rotary_pos_emb = decode_only(torch.compile(rope, dynamic=False), rope)
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
