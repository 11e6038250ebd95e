"""Capture a long conversation in chunks with a KV cache: layer-K activations and the
subject's top-k next-token candidates at every position, with progress and cancel.

The activation at a position depends only on the positions before it, so a
conversation is fed in chunks; each chunk attends to the cached keys/values of every
earlier chunk and the prefix is never recomputed. Peak memory is then one chunk's
activations plus the KV cache, not a whole-conversation forward (a 5 MB transcript
no longer asks for ~1 TB).

On CPU the chunked capture is bit-for-bit the one-pass capture (fp32, tested on the
real Gemma 3 270M). Stock attention kernels reduce over the key axis in an order that
depends on how many keys a call sees, so the same row comes out a few ulps different
with a different chunking. Here attention runs through `rowexact_attention`: keys in
fixed blocks aligned to absolute positions, the row max (exact in any order), then each
block's exp-sum and value product accumulated block by block in position order — a
block a query cannot see adds an exact zero. Every other op (projections, MLP, norms)
is row-wise already, and chunks are at least MIN_CHUNK rows so BLAS keeps one kernel.
That last step is the BLAS's to keep: MKL with several threads splits the reduction of a
long inner axis (the MLP's down projection) by the batch's size on some CPUs (a 2-core
AVX-512 VM), and there the chunked rows match the one-pass rows to float rounding
(~3e-6 relative on the demo), not bit for bit.
On CUDA the model's own attention (sdpa) runs with a sliding-window cache for the
sliding layers (the same values up to kernel rounding, far less memory).

A capture may start at position `start > 0` over a cache already holding the keys and
values of positions 0..start-1 (`KvPrefix.seeded`): an edited conversation (a branch,
core/branch_tree.py) re-runs only from its first changed token. The caller keeps the
rows before `start` from the capture it branched from (Subject.capture splices them).
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..errors import Cancelled
from .loading import text_config
from ..types import Capture

TOP_K = 5
LOGIT_ROWS = 256  # lm_head rows per step: full-vocab logits for 1,000 tokens would be ~1 GB
KEY_BLOCK = 128  # rowexact_attention's key block
MIN_CHUNK = 64  # a shorter tail chunk joins the one before it (BLAS picks other kernels for a few rows)
CPU_CHUNK = 512
LENS_MAX_BYTES = 512 << 20  # every layer's residual kept for the logit lens up to this
KV_KEEP_BYTES = 512 << 20  # the last capture's keys/values kept for an edit's re-capture up to this
ROWEXACT = "nla_rowexact"

CaptureProgress = Callable[[int, int], None]  # (tokens done, total)


def chunk_bounds(n: int, chunk: int) -> list[tuple[int, int]]:
    """[start, end) of each chunk; a tail shorter than MIN_CHUNK joins the previous chunk."""
    chunk = max(chunk, MIN_CHUNK)
    bounds = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < MIN_CHUNK:
        (s, _), _ = bounds[-2], bounds.pop()
        bounds[-1] = (s, n)
    return bounds


def rowexact_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                       softcap=None, sliding_window=None, **_):
    """Causal (optionally sliding-window) attention whose every output row is the same
    whatever the number of queries and cached keys (see the module docstring). Keys are
    the full cache: key j is absolute position j; the queries are the last q positions."""
    b, h, q, d = query.shape
    kvh, klen = key.shape[1], key.shape[2]
    g = h // kvh
    scaling = module.head_dim ** -0.5 if scaling is None else scaling
    qg = query.reshape(b, kvh, g * q, d)  # heads sharing a kv head: one matmul, no repeat_kv
    qpos = torch.arange(klen - q, klen, device=query.device).repeat(g)[:, None]
    nb = -(-klen // KEY_BLOCK)
    pad = nb * KEY_BLOCK - klen
    if pad:
        key = torch.nn.functional.pad(key, (0, 0, 0, pad))
        value = torch.nn.functional.pad(value, (0, 0, 0, pad))
    scores = []
    for blk in range(nb):
        sl = slice(blk * KEY_BLOCK, (blk + 1) * KEY_BLOCK)
        s = torch.matmul(qg, key[:, :, sl].transpose(-1, -2)) * scaling
        if softcap is not None:
            s = torch.tanh(s / softcap) * softcap
        kpos = torch.arange(sl.start, sl.stop, device=query.device)[None, :]
        ok = (kpos <= qpos) & (kpos < klen)
        if sliding_window is not None:
            ok &= kpos > qpos - sliding_window
        scores.append(s.float().masked_fill(~ok, float("-inf")))
    m = scores[0].amax(-1, keepdim=True)
    for s in scores[1:]:
        m = torch.maximum(m, s.amax(-1, keepdim=True))
    total = torch.zeros_like(m)
    out = torch.zeros(b, kvh, g * q, d, dtype=torch.float32, device=query.device)
    for blk, s in enumerate(scores):
        e = torch.exp(s - m)
        total = total + e.sum(-1, keepdim=True)
        out = out + torch.matmul(e, value[:, :, blk * KEY_BLOCK:(blk + 1) * KEY_BLOCK].float())
    out = (out / total).to(query.dtype).reshape(b, h, q, d)
    return out.transpose(1, 2).contiguous(), None


_registered = False


def _register() -> None:
    global _registered
    if not _registered:
        from transformers import AttentionInterface

        AttentionInterface.register(ROWEXACT, rowexact_attention)
        _registered = True


@contextlib.contextmanager
def _attention(model, name: str | None):
    """Run the model with attention implementation `name` (None: leave it)."""
    if name is None:
        yield
        return
    configs = {id(c): c for c in (model.config, getattr(model.config, "text_config", None)) if c is not None}
    old = {k: c._attn_implementation for k, c in configs.items()}
    try:
        for c in configs.values():
            c._attn_implementation = name
        yield
    finally:
        for k, c in configs.items():
            c._attn_implementation = old[k]


def default_chunk(subject, n_tokens: int) -> int:
    if subject.device.type != "cuda":
        return CPU_CHUNK
    from .capture_memory import chunk_for_budget, gpu_budget

    return chunk_for_budget(text_config(subject.model), n_tokens, gpu_budget(subject.device))


def new_cache(subject):
    """An empty KV cache for a capture. CPU: a full cache on every layer (rowexact_attention
    indexes keys by position). CUDA: the config's cache keeps only a window for the
    sliding-attention layers."""
    from transformers import DynamicCache

    return DynamicCache() if subject.device.type == "cpu" else DynamicCache(config=text_config(subject.model))


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading ids `a` and `b` share."""
    n = min(len(a), len(b))
    return next((k for k in range(n) if a[k] != b[k]), n)


@dataclass
class KvPrefix:
    """The subject's keys and values for `ids` (positions 0..len(ids)-1), kept after a
    capture so the capture of an edited conversation re-runs only its changed suffix."""

    ids: list[int]
    cache: Any  # transformers DynamicCache

    def reusable(self, ids: list[int]) -> int:
        """How many leading positions of `ids` this cache can seed: the prefix the two share,
        when every layer still holds every position (a sliding-window layer that dropped
        its oldest keys on CUDA cannot be rolled back, so then none)."""
        return common_prefix(self.ids, ids) if self.complete else 0

    @property
    def complete(self) -> bool:
        n = len(self.ids)
        return all(layer.keys.shape[-2] == n for layer in self.cache.layers if getattr(layer, "is_initialized", False))

    def seeded(self, subject, start: int):
        """A new cache holding positions 0..start-1 (a copy: this one stays as it is)."""
        cache = new_cache(subject)
        for k, layer in enumerate(self.cache.layers):
            if getattr(layer, "is_initialized", False):
                cache.update(layer.keys[..., :start, :], layer.values[..., :start, :], k)
        return cache

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for layer in self.cache.layers if getattr(layer, "is_initialized", False)
                   for t in (layer.keys, layer.values))


def kv_keep_budget() -> int:
    """Bytes of keys/values a capture may leave behind for the next edit's re-capture (env
    NLA_TUI_KV_KEEP_BYTES, default 512 MiB: ~14,500 demo tokens on CPU; 0 keeps none)."""
    try:
        return int(os.environ.get("NLA_TUI_KV_KEEP_BYTES", KV_KEEP_BYTES))
    except ValueError:  # not a number: the default, rather than failing every capture
        return KV_KEEP_BYTES


@torch.inference_mode()
def capture_chunked(subject, ids: list[int], chunk: int | None = None, progress: CaptureProgress | None = None,
                    cancel: threading.Event | None = None, start: int = 0, cache=None) -> tuple[Capture, Any]:
    """Layer-K activations (float32) and top-k candidates at positions start..T-1 (rows
    0..T-start-1 of the result), and every layer's residual for the logit lens while the
    whole conversation's fits LENS_MAX_BYTES; with the KV cache it filled (all T positions).
    `cache` must hold the keys/values of positions 0..start-1 (KvPrefix.seeded)."""
    exact = subject.device.type == "cpu"
    if exact:
        _register()
    cfg = text_config(subject.model)
    chunk = chunk or default_chunk(subject, len(ids) - start)
    bounds = [(s + start, e + start) for s, e in chunk_bounds(len(ids) - start, chunk)]
    if cache is None:
        assert start == 0, "a capture from a later position needs the prefix's cache"
        cache = new_cache(subject)
    acts: list[np.ndarray] = []
    hidden: list[torch.Tensor] = []
    store: dict[int, torch.Tensor] = {}
    layers = subject.decoder.layers
    # The logit lens reads every layer's residual; kept on the host while it fits the budget.
    keep_all = lens_fits(len(ids), len(layers), cfg.hidden_size)
    residuals: list[np.ndarray] = []

    def hook_for(k: int):
        # Straight to host memory: holding every layer's output on the card until the chunk
        # ends would cost L x the chunk's activations there (~340 MB per 512 tokens of the 27B).
        def hook(_mod, _inp, out):
            store[k] = (out[0] if isinstance(out, tuple) else out)[0].float().cpu()
        return hook

    handles = [layer.register_forward_hook(hook_for(k)) for k, layer in enumerate(layers)
               if keep_all or k == subject.layer]
    try:
        with _attention(subject.model, ROWEXACT if exact else None):
            for s, e in bounds:
                if cancel is not None and cancel.is_set():
                    raise Cancelled()
                x = torch.tensor([ids[s:e]], device=subject.device)
                pos = torch.arange(s, e, device=subject.device)
                out = subject.decoder(input_ids=x, cache=cache, use_cache=True,
                                      cache_position=pos, position_ids=pos[None])
                acts.append(store[subject.layer].numpy())
                if keep_all:
                    residuals.append(torch.stack([store[k] for k in range(len(layers))], 1).numpy())
                store.clear()
                hidden.append(out.last_hidden_state[0])
                if progress:
                    progress(e, len(ids))
    finally:
        for handle in handles:
            handle.remove()
    top_ids, top_probs = top_candidates(subject, cfg, torch.cat(hidden))
    return Capture(np.concatenate(acts), top_ids, top_probs,
                   np.concatenate(residuals) if keep_all else None), cache


def lens_fits(n_tokens: int, n_layers: int, d_model: int) -> bool:
    """Whether every layer's residual (float32, host memory) fits the logit lens's budget
    (env NLA_TUI_LENS_MAX_BYTES, default 512 MiB: ~11,600 demo tokens, ~400 of the 27B's)."""
    try:
        budget = int(os.environ.get("NLA_TUI_LENS_MAX_BYTES", LENS_MAX_BYTES))
    except ValueError:  # not a number: the default, rather than failing every capture
        budget = LENS_MAX_BYTES
    return n_tokens * n_layers * d_model * 4 <= budget


def top_candidates(subject, cfg, h: torch.Tensor, k: int = TOP_K) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (ids, probs) of the unembedding of final-normed hidden states `h` [rows, d]."""
    # Rows in fixed LOGIT_ROWS blocks from position 0, whatever the chunking: the same
    # matmul shapes as a one-pass capture, so the same bits.
    cap = getattr(cfg, "final_logit_softcapping", None)
    ids, probs = [], []
    for i in range(0, h.shape[0], LOGIT_ROWS):
        logits = subject.lm_head(h[i:i + LOGIT_ROWS]).float()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        p, t = torch.softmax(logits, dim=-1).topk(k, dim=-1)
        ids.append(t.cpu())
        probs.append(p.cpu())
    return torch.cat(ids).numpy(), torch.cat(probs).numpy()
