"""Per-position controls: is the explanation about *this* activation, or would any text do?

specificity  The AR's reconstruction of position i's explanation, scored against K other
             positions of the same conversation and role: fve_own − mean(fve_others).
             An explanation that only says "an assistant token in a chat" reconstructs every
             such position about equally well (specificity ≈ 0); one that names this
             token, its context and its prediction scores its own vector best (> 0).
             Same conversation and role, so topic and role alone cannot make it positive.
prior        The AR's reconstruction of one fixed content-free sentence (PRIOR_TEXT), scored
             against position i: how much fidelity any text gets for free (the AR's output
             always points roughly along the mean activation). fve_nrm − prior_fve is what
             the explanation's content adds.

Both reuse the AR's reconstruction vectors: one extra AR pass per explanation (and one
per sweep for the prior), no AV work. Scores use the same score_vectors as the main score.
"""

from __future__ import annotations

import numpy as np

from ..nla.ar import score_vectors

PRIOR_TEXT = "A token in a piece of text."
DEFAULT_OTHERS = 8


def pick_others(i: int, pool: list[int], k: int) -> list[int]:
    """Up to k positions of `pool` other than i, evenly spaced (deterministic: a rerun or a
    resumed shard picks the same ones)."""
    rest = [p for p in pool if p != i]
    if len(rest) <= k:
        return rest
    return [rest[(j * len(rest)) // k] for j in range(k)]


def _fidelity(pred: np.ndarray, gold: np.ndarray, mse_scale: float, variance: float | None) -> float:
    return score_vectors(pred, gold, mse_scale, variance).fidelity


def specificity(recon: np.ndarray, own_fidelity: float | None, others: np.ndarray, mse_scale: float,
                variance: float | None) -> tuple[float | None, float | None]:
    """(own − mean of others, mean of others); (None, None) without others or an own score."""
    if own_fidelity is None or len(others) == 0:
        return None, None
    mean = float(np.mean([_fidelity(recon, o, mse_scale, variance) for o in others]))
    return own_fidelity - mean, mean


def prior(prior_recon: np.ndarray, vector: np.ndarray, mse_scale: float, variance: float | None
          ) -> tuple[float | None, float]:
    """(prior fve_nrm or None without a variance baseline, prior cos)."""
    s = score_vectors(prior_recon, vector, mse_scale, variance)
    return s.fve_nrm, s.cos
