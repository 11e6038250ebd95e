"""The one explain path: activation vectors in, finished, scored `Explanation`s out.

    exps = explain(av, ar, vectors, sampling, prompt, indices, on_text, cancel)

is the AV (one batch of rows decoded together) then the AR (scoring what the AV wrote).
Every way of explaining goes through here — the cursor's `e`, explain-all (parked or
not), explain-vectors, steer, the corpus sweep — so an Explanation is built in one
place (`finish`) and its warnings (injection smells, the AV's fallbacks — generic text, a
loop, no closing tag — and a non-finite score) are made once, as data, never re-derived by
a reader. The cross-position fallback (one text for many vectors) needs the conversation's
other explanations: core/fallbacks.py, applied by whoever holds them.

Streaming: `on_text(index, text_so_far)` carries the *absolute* label of the row (the
token index for a conversation, the row number for free vectors), so no caller remaps
row numbers.
"""

from __future__ import annotations

import re
import threading
from typing import Callable, Sequence

import numpy as np

from ..fallbacks import GENERIC_WARNING, REPETITION_WARNING
from ..types import NOT_FINITE_WARNING, TRUNCATED_WARNING, Explanation, Sampling, Score
from .av import Verbalizer, injection_warnings, parse_explanation

OnText = Callable[[int, str], None]  # (absolute index, explanation text so far)


def labels_for(indices: Sequence[int] | None, rows: int) -> list[int]:
    """The index each row is known by: the token index, or the row number for free vectors."""
    return list(indices) if indices is not None else list(range(rows))


def write(av: Verbalizer, vectors: np.ndarray, sampling: Sampling, prompt: str | None,
          labels: Sequence[int], on_text: OnText | None = None,
          cancel: threading.Event | None = None) -> list[str] | None:
    """The AV pass alone: raw output per row (one decode batch), or None when cancelled
    (a cancelled pass leaves partial rows, which are dropped)."""
    stream = (lambda row, text: on_text(labels[row], text)) if on_text else None
    raws = av.generate(vectors, sampling, prompt, stream, cancel)
    if cancel is not None and cancel.is_set():
        return None
    return raws


# The AV's "I have nothing to say" phrasings (core/fallbacks.py); matched on word boundaries.
_GENERIC = re.compile(
    r"\b(?:can ?not|can't|cannot|unable to|impossible to|hard to|difficult to) (?:tell|say|determine|know|infer)\b"
    r"|\bnot (?:enough|sufficient) (?:information|context)\b|\bno (?:clear|specific|particular) "
    r"(?:meaning|concept|information|content|topic)\b|\bi (?:do not|don't) know\b|\bunclear what\b",
    re.IGNORECASE)
GENERIC_MIN_WORDS = 3  # fewer words than this says nothing either
# A loop: one unit of 1-8 words repeated back to back; a single word needs more repeats, since
# a token's name in its own explanation legitimately comes a few times ("staan staan staan").
_LOOP_REPEATS = {1: 6}
_LOOP_REPEATS_LONGER = 3


def is_generic(text: str) -> bool:
    """Generic or "cannot tell" text: the AV's fallback when the vector gave it nothing."""
    return len(re.findall(r"\w+", text)) < GENERIC_MIN_WORDS or bool(_GENERIC.search(text))


def is_repetitive(text: str) -> bool:
    """A unit of 1-8 words repeated back to back (6 times for one word, 3 for longer)."""
    words = re.findall(r"\w+", text.lower())
    for n in range(1, 9):
        need = _LOOP_REPEATS.get(n, _LOOP_REPEATS_LONGER)
        for start in range(len(words) - n * need + 1):
            unit, reps, at = words[start:start + n], 1, start + n
            while words[at:at + n] == unit:
                reps, at = reps + 1, at + n
            if reps >= need:
                return True
    return False


def warnings_for(raw: str, truncated: bool, score: Score | None, injection_char: str,
                 scored: bool = True, text: str | None = None) -> list[str]:
    """Everything a reader should be told about one explanation, in the order shown.
    `text` is the parsed explanation (default: the raw output)."""
    out = injection_warnings(raw, injection_char)
    body = raw if text is None else text
    if is_generic(body):
        out.append(GENERIC_WARNING)
    if is_repetitive(body):
        out.append(REPETITION_WARNING)
    if truncated:
        out.append(TRUNCATED_WARNING)
    if scored and score is None:
        out.append(NOT_FINITE_WARNING)
    return out


def finish(av: Verbalizer, ar, vectors: np.ndarray, raws: Sequence[str], indices: Sequence[int] | None,
           sampling: Sampling, prompt: str | None) -> list[Explanation]:
    """Score the AV's raw outputs with the AR (one batch) and build the Explanations."""
    parsed = [parse_explanation(r) for r in raws]
    scores: list[Score | None] = ar.score([t for t, _ in parsed], vectors) if ar is not None else [None] * len(raws)
    idx = list(indices) if indices is not None else [-1] * len(raws)
    char = av.meta.injection_char
    return [Explanation(index=i, text=text, raw=raw, sampling=sampling, prompt=prompt, score=score,
                        truncated=truncated,
                        warnings=warnings_for(raw, truncated, score, char, scored=ar is not None, text=text),
                        untrained_av=av.meta.untrained)
            for i, raw, (text, truncated), score in zip(idx, raws, parsed, scores)]


def explain(av: Verbalizer, ar, vectors: np.ndarray, sampling: Sampling, prompt: str | None = None,
            indices: Sequence[int] | None = None, on_text: OnText | None = None,
            cancel: threading.Event | None = None, labels: Sequence[int] | None = None) -> list[Explanation]:
    """AV then AR for one batch of vectors; [] when cancelled. Explanations carry `indices`
    (-1 for free vectors); streaming is labelled by `labels`, default the indices, else the
    row numbers."""
    if labels is None:
        labels = labels_for(indices, len(vectors))
    raws = write(av, vectors, sampling, prompt, labels, on_text, cancel)
    if raws is None:
        return []
    return finish(av, ar, vectors, raws, indices, sampling, prompt)
