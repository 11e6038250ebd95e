"""The AV's known fallbacks, flagged so a low-information explanation is not read as insight.

An AV that has nothing to say falls back on a few habits: generic or "cannot tell" text,
a phrase repeated in a loop, the same explanation for many different vectors of one
conversation, or an explanation that never closes (core/types.TRUNCATED_WARNING). The
per-explanation checks run where every Explanation is built (core/nla/explain.py
`warnings_for`); the cross-position one needs the conversation's other explanations, so it
is this pure function over a list, applied by explain-all, the sweep, the exports, and the
UI's state (which knows every explanation of the open conversation). Plain stdlib: the UI
imports it.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Mapping, Sequence

from .types import Explanation

GENERIC_WARNING = "fallback: generic or \"cannot tell\" text; the AV found nothing specific to say about this vector"
REPETITION_WARNING = "fallback: the explanation repeats itself in a loop; the AV may be degenerate for this vector"
NEAR_DUPLICATE_PREFIX = "fallback: near-identical to the explanations of"

# A near-duplicate needs this many positions holding *different* tokens: the same token in a
# repeated context legitimately gets the same explanation (the recorded session repeats its
# sentence four times), different tokens sharing one text is the fallback.
NEAR_DUPLICATE_MIN_TOKENS = 3
NEAR_DUPLICATE_SIMILARITY = 0.8  # Jaccard over word unigrams + bigrams
_WORD = re.compile(r"\w+", re.UNICODE)


def near_duplicate_warning(others: int) -> str:
    return f"{NEAR_DUPLICATE_PREFIX} {others} other positions with different tokens; the AV may be ignoring the vector"


def _shingles(text: str) -> frozenset[str]:
    words = [w.lower() for w in _WORD.findall(text)]
    return frozenset(words) | frozenset(f"{a} {b}" for a, b in zip(words, words[1:]))


def _similar(a: frozenset[str], b: frozenset[str]) -> bool:
    if not a or not b:
        return a == b
    small, big = sorted((len(a), len(b)))
    if small < NEAR_DUPLICATE_SIMILARITY * big:  # Jaccard can't reach the bar: skip the set work
        return False
    return len(a & b) / len(a | b) >= NEAR_DUPLICATE_SIMILARITY


def near_duplicates(explanations: Sequence[Explanation],
                    tokens: Mapping[int, str] | None = None) -> dict[int, int]:
    """{row: how many other positions, with other tokens, have a near-identical explanation}
    for every row flagged. `tokens` maps a position to its token text (None: free vectors,
    every row its own position and token)."""
    sets = [_shingles(e.text) for e in explanations]
    token_of = [(tokens.get(e.index, f"#{e.index}") if tokens is not None else f"row{r}")
                for r, e in enumerate(explanations)]
    pos_of = [e.index if tokens is not None else r for r, e in enumerate(explanations)]
    flagged: dict[int, int] = {}
    for r, s in enumerate(sets):
        matches = {(pos_of[o], token_of[o]) for o in range(len(sets))
                   if pos_of[o] != pos_of[r] and token_of[o] != token_of[r] and _similar(s, sets[o])}
        if len({t for _, t in matches}) + 1 >= NEAR_DUPLICATE_MIN_TOKENS:
            flagged[r] = len({p for p, _ in matches})
    return flagged


def is_near_duplicate_warning(warning: str) -> bool:
    return warning.startswith(NEAR_DUPLICATE_PREFIX)


def with_near_duplicates(explanations: Sequence[Explanation],
                         tokens: Mapping[int, str] | None = None) -> list[Explanation]:
    """The explanations with the cross-position warning made current: added where one is a
    near-duplicate now, a stale one (from an earlier, smaller set) dropped."""
    flagged = near_duplicates(explanations, tokens)
    out = []
    for r, e in enumerate(explanations):
        kept = [w for w in e.warnings if not is_near_duplicate_warning(w)]
        if r in flagged:
            kept.append(near_duplicate_warning(flagged[r]))
        out.append(e if kept == e.warnings else replace(e, warnings=kept))
    return out
