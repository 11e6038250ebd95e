"""Steering the subject: add a vector to its layer-K residual stream at chosen
positions, and continue a conversation from a position with that in place.

Kept apart from subject.py (capture and chat) on purpose: everything here works on
a `Subject` from the outside, through a forward hook on `layers[K]` that exists only
inside `steer(...)`.

The hook selects positions by comparing the layer's `position_ids` with two 0-d
tensors [lo, hi), and adds `vec` there with tensor ops only (no host sync). That makes
it capturable in fast_decode's CUDA graph: the steered decode uses its own graph tag,
and the hook object (and so the buffers the graph reads) is one per subject, re-aimed
by copying into those buffers before each call.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch

from ..errors import InputError
from .loading import text_config
from ..types import Candidate

SPANS = ("here", "onward")
STEER_GRAPH_TAG = "steer"
NO_END = 2**62  # "every later position": larger than any context length


class SteeringHook:
    """forward hook (with_kwargs) on one decoder layer: out[pos] += vec for lo <= pos < hi."""

    def __init__(self, d_model: int, device: torch.device):
        # fp32, cast to the residual's dtype at the add (nf4/bf16 models compute in bf16).
        self.vec = torch.zeros(d_model, device=device, dtype=torch.float32)
        self.lo = torch.zeros((), dtype=torch.long, device=device)
        self.hi = torch.zeros((), dtype=torch.long, device=device)

    def aim(self, vector: np.ndarray | torch.Tensor, lo: int, hi: int) -> None:
        self.vec.copy_(torch.as_tensor(np.asarray(vector, np.float32)).to(self.vec.device))
        self.lo.fill_(int(lo))
        self.hi.fill_(int(hi))

    def __call__(self, _module, _args, kwargs, output):
        h = output[0] if isinstance(output, tuple) else output
        pos = kwargs.get("position_ids")
        if pos is None:  # a plain full forward: positions are 0..T-1
            pos = torch.arange(h.shape[1], device=h.device)[None]
        pos = pos.to(h.device)
        sel = ((pos >= self.lo) & (pos < self.hi)).to(h.dtype)[..., None]  # [B|1, T, 1]
        h = h + sel * self.vec.to(h.dtype)
        return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h


def _layer(subject):
    return subject.decoder.layers[subject.layer]


def hook_for(subject) -> SteeringHook:
    """The subject's one steering hook (created on first use, beside layer K's weights)."""
    hook = getattr(subject, "_steering_hook", None)
    if hook is None:
        device = next(_layer(subject).parameters()).device
        hook = SteeringHook(text_config(subject.model).hidden_size, device)
        subject._steering_hook = hook
    return hook


def positions(index: int, span: str) -> tuple[int, int]:
    """[lo, hi) of the positions a span steers: the token alone, or it and every later one."""
    if span not in SPANS:
        raise InputError(f"--span {span!r} is not one of {', '.join(SPANS)}: 'here' steers the token only, "
                         f"'onward' the token and every position after it (the regenerated ones too).")
    return index, (index + 1 if span == "here" else NO_END)


@contextmanager
def steer(subject, vector: np.ndarray | torch.Tensor, lo: int, hi: int) -> Iterator[SteeringHook]:
    """Within the block, every forward of the subject adds `vector` to layer K's output
    at positions lo <= p < hi. The hook is removed on exit, whatever happens."""
    d = text_config(subject.model).hidden_size
    v = np.asarray(vector, np.float32).reshape(-1)
    if v.shape[0] != d:
        raise InputError(f"The steering vector has width {v.shape[0]} but the subject's d_model is {d}.")
    if not np.isfinite(v).all():
        raise InputError("The steering vector contains NaN or Inf; it cannot be added to the residual stream.")
    hook = hook_for(subject)
    hook.aim(v, lo, hi)
    handle = _layer(subject).register_forward_hook(hook, with_kwargs=True)
    try:
        yield hook
    finally:
        handle.remove()


@torch.inference_mode()
def last_logits(subject, ids: list[int]) -> torch.Tensor:
    """The subject's next-token logits after `ids` (any active steering applies), fp32 [V]."""
    x = torch.tensor([ids], device=subject.device)
    h = subject.decoder(input_ids=x, use_cache=False).last_hidden_state[0, -1:]
    logits = subject.lm_head(h).float()[0]
    cap = getattr(text_config(subject.model), "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def top_candidates(subject, logits: torch.Tensor, k: int = 5) -> list[Candidate]:
    p, t = torch.softmax(logits, dim=-1).topk(k)
    return [Candidate(int(i), subject.tok.decode([int(i)]), float(q)) for i, q in zip(t.tolist(), p.tolist())]


@torch.inference_mode()
def continue_from(subject, ids: list[int], max_new_tokens: int, steered: bool = False,
                  cancel: threading.Event | None = None,
                  on_token: Callable[[int], None] | None = None) -> list[int]:
    """Greedy continuation of the token sequence `ids` (a conversation cut after some
    position), through fast_decode: static KV cache, CUDA graphs on GPU, the same path
    eagerly on CPU. Call inside `steer(...)` with steered=True to decode under the hook
    (its own graph). Returns the new token ids, without the stop token."""
    from . import fast_decode

    embeds = subject.model.get_input_embeddings()(torch.tensor([ids], device=subject.device))
    stops = set(subject.stop_ids())

    def step(new: torch.Tensor) -> bool:
        if cancel is not None and cancel.is_set():
            return False
        if on_token is not None and int(new[0]) >= 0:
            on_token(int(new[0]))
        return True

    subject.forward_calls += 1
    rows = fast_decode.decode(subject.model, embeds, None, max_new_tokens, stop_token_ids=stops, on_step=step,
                              max_batch=1, graph_tag=STEER_GRAPH_TAG if steered else "")
    return [t for t in rows[0] if t not in stops]
