"""Held-out evaluation of a pair, with the baselines measured in the same run.

Figures: mean and median fve_nrm and cos of greedy explanations (≤ 64 new tokens),
the share with a closing tag; a shuffled control (explanation i scored against vector
j); the AR fed the warm-start target text directly. Scoring is the product's
(`nla_tui.core.nla.ar.score_vectors`); truncated explanations are scored too (the release
never scores them; we report both the all-rows and closed-only means).
"""

from __future__ import annotations

import statistics

import numpy as np
import torch

from nla_tui.core.nla.ar import score_vectors
from nla_tui.core.nla.av import parse_explanation
from nla_tui.core.types import Sampling

MAX_NEW = 64


def _summary(scores, prefix: str) -> dict:
    fve = [s.fve_nrm for s in scores]
    cos = [s.cos for s in scores]
    return {f"{prefix}fve_mean": float(np.mean(fve)), f"{prefix}fve_median": float(statistics.median(fve)),
            f"{prefix}cos_mean": float(np.mean(cos))}


def explain(vz, vectors: np.ndarray, batch: int, max_new: int = MAX_NEW) -> tuple[list[str], list[bool]]:
    texts, truncated = [], []
    for i in range(0, len(vectors), batch):
        raw = vz.generate(vectors[i:i + batch], Sampling(max_new_tokens=max_new))
        for r in raw:
            t, tr = parse_explanation(r)
            texts.append(t)
            truncated.append(tr)
    return texts, truncated


@torch.inference_mode()
def evaluate(vz, rc, vectors: np.ndarray, targets: list[str] | None = None, batch: int = 64,
             seed: int = 0, max_new: int = MAX_NEW) -> dict:
    """Every figure of the eval table for one pair on `vectors` [N, d]."""
    vectors = np.asarray(vectors, dtype=np.float32)
    texts, truncated = explain(vz, vectors, batch, max_new)
    preds = rc.reconstruct(texts)
    var, ms = rc.variance, rc.meta.mse_scale
    scores = [score_vectors(p, g, ms, var) for p, g in zip(preds, vectors)]
    perm = np.random.default_rng(seed).permutation(len(vectors))
    # A derangement-ish shuffle: a row scored against itself is not a control.
    perm = np.where(perm == np.arange(len(perm)), np.roll(perm, 1), perm)
    shuffled = [score_vectors(preds[i], vectors[j], ms, var) for i, j in enumerate(perm)]
    out = {"n": len(vectors), "closed_share": float(1 - np.mean(truncated)), **_summary(scores, "")}
    closed = [s for s, t in zip(scores, truncated) if not t]
    if closed:
        out.update(_summary(closed, "closed_"))
    out.update(_summary(shuffled, "shuffled_"))
    if targets is not None:
        tp = rc.reconstruct(list(targets))
        out.update(_summary([score_vectors(p, g, ms, var) for p, g in zip(tp, vectors)], "ar_on_target_"))
    out["examples"] = [{"explanation": t, "target": (targets[i] if targets else None),
                        "fve_nrm": round(scores[i].fve_nrm, 3)} for i, t in enumerate(texts[:12])]
    return out
