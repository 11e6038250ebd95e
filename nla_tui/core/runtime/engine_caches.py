"""The engine's use of the on-disk caches, kept out of engine.py so its edit stays tiny.

    cap = caches.capture(info, ids, subject.capture)            # subject runs only on a miss
    exps = caches.explain(info, vectors, sampling, prompt, on_text, cancel, indices, compute)

Both are pass-through when `enabled` is False. Torch-free: a cached capture comes back
as the same `types.Capture` the subject produces.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Callable

import numpy as np

from ..store.cache import ActivationCache, ExplanationCache, av_identity, subject_identity
from ..types import Capture, Explanation, ModelInfo, Sampling
from ..errors import InputError

log = logging.getLogger(__name__)
LENS_CACHE_BYTES = 64 << 20  # every layer's residual is cached with the activations up to this


_YES, _NO = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def env_flag(name: str) -> bool:
    """A yes/no environment variable: 1/true/yes/on or 0/false/no/off (any case; unset
    is no). `NLA_TUI_NO_CACHE=false` means caches on, not off; anything else is refused."""
    value = os.environ.get(name, "").strip().lower()
    if value in _YES:
        return True
    if value in _NO:
        return False
    raise InputError(f"{name}={os.environ[name]!r} is not a yes/no value: set it to 1 (yes) or 0 (no), or unset it.")


class EngineCaches:
    """Activation + explanation caches under one root (default: NLA_TUI_CACHE / user cache).

    Disabled by env NLA_TUI_NO_CACHE=1 or enabled=False (e.g. `--no-cache`).
    """

    def __init__(self, root: str | os.PathLike | None = None, enabled: bool | None = None,
                 max_bytes: int | str | None = None) -> None:
        if enabled is None:
            enabled = not env_flag("NLA_TUI_NO_CACHE")
        self.activations: ActivationCache | None = None
        self.explanations: ExplanationCache | None = None
        self.quantised = None  # quant_cache.QuantCache: pre-quantised nf4/int8 models
        if enabled:
            try:
                self.activations = ActivationCache(root, max_bytes)
                self.explanations = ExplanationCache(root)
                from ..models.quant_cache import QuantCache

                self.quantised = QuantCache(root)
            except OSError as e:  # read-only or full cache dir: run uncached, don't fail
                log.warning("caches disabled: cannot use %s (%s)", root or "the cache dir", e)
                self.activations = self.explanations = None
        self.enabled = self.activations is not None

    def capture(self, info: ModelInfo, ids: list[int], compute: Callable[[list[int]], object]):
        """The subject's capture of `ids`, from disk when this exact sequence was seen."""
        if self.activations is None:
            return compute(ids)
        ident = subject_identity(info)
        hit = self.activations.get(ident, ids)
        if hit is not None and {"top_ids", "top_probs"} <= hit.extras.keys():
            return Capture(hit.activations, hit.extras["top_ids"], hit.extras["top_probs"],
                           hit.extras.get("residuals"))
        cap = compute(ids)
        extras = {"top_ids": np.asarray(cap.top_ids, np.int64), "top_probs": np.asarray(cap.top_probs, np.float32)}
        # The logit lens's residuals travel with the activations while small (a typical chat);
        # a long transcript's would swamp the cache, and the engine recaptures them on demand.
        residuals = getattr(cap, "residuals", None)  # compute may be any capture-shaped object
        if residuals is not None and residuals.nbytes <= LENS_CACHE_BYTES:
            extras["residuals"] = np.asarray(residuals, np.float32)
        self.activations.put(ident, ids, cap.activations, extras)
        return cap

    def cached(self, info: ModelInfo, vectors: np.ndarray, sampling: Sampling, prompt: str | None,
               indices: list[int]) -> list[Explanation | None]:
        """The cached explanation of each vector, None where there is none (or caching is off)."""
        if self.explanations is None:
            return [None] * len(vectors)
        ident = av_identity(info)
        return [self.explanations.get(ident, v, prompt, sampling, i) for v, i in zip(vectors, indices)]

    def store(self, info: ModelInfo, vectors: np.ndarray, sampling: Sampling, prompt: str | None,
              exps: list[Explanation]) -> None:
        if self.explanations is None:
            return
        ident = av_identity(info)
        for v, e in zip(vectors, exps):
            self.explanations.put(ident, v, prompt, sampling, e)

    def explain(self, info: ModelInfo, vectors: np.ndarray, sampling: Sampling, prompt: str | None,
                on_text: Callable[[int, str], None] | None, cancel: threading.Event | None,
                indices: list[int] | None, compute: Callable[..., list[Explanation]]) -> list[Explanation]:
        """Explanations of `vectors` in order; the AV/AR (`compute(vectors, sampling, prompt,
        on_text, cancel, indices, labels)`, nla.explain.explain) run only on the vectors not
        cached. Like compute, returns [] when cancelled."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim == 1:
            vectors = vectors[None]
        idx = list(indices) if indices is not None else [-1] * len(vectors)
        if self.explanations is None:
            return compute(vectors, sampling, prompt, on_text, cancel, indices, None)
        ident = av_identity(info)
        out: list[Explanation | None] = [
            self.explanations.get(ident, v, prompt, sampling, i) for v, i in zip(vectors, idx)]
        miss = [k for k, e in enumerate(out) if e is None]
        if miss:
            # Streaming is labelled by each row's own index (free vectors: their row number).
            sub = [indices[k] for k in miss] if indices is not None else None
            fresh = compute(vectors[miss], sampling, prompt, on_text, cancel, sub, sub if sub is not None else miss)
            if len(fresh) != len(miss):  # cancelled
                return []
            for k, e in zip(miss, fresh):
                out[k] = e
                self.explanations.put(ident, vectors[k], prompt, sampling, e)
        return out  # type: ignore[return-value]
