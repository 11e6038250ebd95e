"""Per-sentence fidelity: which part of an explanation the vector actually supports.

Each sentence (or line) is scored by the AR on its own and the explanation is scored with
that sentence left out, all in one batched AR pass (2n texts for n sentences). A sentence
whose removal costs fidelity carries something of the vector no other sentence does; one
whose removal costs nothing is decoration (or repeats another).
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np

from ..types import Explanation, SentenceScore
from .ar import score_vectors

# A sentence ends at . ! ? followed by whitespace, or at a line break — but not inside a
# quoted span on one line ('Token " in" after "the Eiffel. It is"' is one sentence).
_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")
_QUOTED = re.compile(r'"[^"\n]*"')
MAX_SENTENCES = 24  # longer explanations are scored by their first 24 (the AR batch stays small)


def split_sentences(text: str) -> list[str]:
    quoted: list[str] = []

    def hide(m: re.Match) -> str:
        quoted.append(m.group())
        return f"\x00{len(quoted) - 1}\x00"

    hidden = _QUOTED.sub(hide, text)
    parts = [re.sub(r"\x00(\d+)\x00", lambda m: quoted[int(m.group(1))], p).strip() for p in _SPLIT.split(hidden)]
    return [p for p in parts if p][:MAX_SENTENCES]


def _fidelity(pred: np.ndarray, vector: np.ndarray, ar) -> float | None:
    s = score_vectors(pred, vector, ar.meta.mse_scale, ar.variance)
    f = s.fidelity
    return f if np.isfinite(f) else None


def sentence_scores(ar, text: str, vector: np.ndarray) -> list[SentenceScore] | None:
    """Each sentence alone and left out, in one AR pass; None for fewer than two sentences
    (one sentence alone is the explanation's own score)."""
    parts = split_sentences(text)
    if len(parts) < 2:
        return None
    texts = parts + [" ".join(parts[:k] + parts[k + 1:]) for k in range(len(parts))]
    preds = ar.reconstruct(texts, batch_size=len(texts))
    n = len(parts)
    return [SentenceScore(parts[k], _fidelity(preds[k], vector, ar), _fidelity(preds[n + k], vector, ar))
            for k in range(n)]


def with_sentence_scores(ar, exp: Explanation, vector: np.ndarray) -> Explanation:
    return replace(exp, sentences=sentence_scores(ar, exp.text, vector))
