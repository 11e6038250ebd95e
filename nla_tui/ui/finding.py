"""Finding the tokens that matter (pure, no Textual): regex search over token and
explanation text, rankings for the jump keys, the subject's surprise, explain scopes.

Surprise at position i is -log p(token i+1 | tokens ≤ i), read from the top-5 next-token
candidates captured at i: it is where the subject's prediction went against what came
next, and the activation at i is the one that made that prediction. When the actual
next token is not in the top 5 its probability is at most min(p5, 1 − Σ top-5), and
that bound is used (so such tokens rank as at least that surprising).
"""

from __future__ import annotations

import re
from bisect import bisect_right
from typing import Iterable, Sequence

from ..core.corpus.selection import surprise  # noqa: F401  (one definition: the jump key and sweeps)
from ..core.types import TokenInfo
from .state import SPECIAL_ROLES, UiState

JUMP_KINDS = ("fidelity", "norm", "surprise")
ROLE_FILTERS = (None, "model", "user", "tool_call", "tool_result", "system")
MOST_SURPRISING = 200


def compile_pattern(text: str) -> re.Pattern[str]:
    """Case-insensitive unless the pattern has a capital (as in less/vim smartcase)."""
    flags = 0 if any(c.isupper() for c in text) else re.IGNORECASE
    return re.compile(text, flags)


def check_pattern(text: str) -> str | None:
    if not text:
        return "Type a regular expression (e.g. umbrella|rain, or get_\\w+)."
    try:
        compile_pattern(text)
    except re.error as e:
        return f"Not a valid regular expression: {e}."
    return None


def search(state: UiState, pattern: re.Pattern[str], indices: Sequence[int]) -> list[tuple[int, int]]:
    """Matches as (first token, last token), in order. Token text is searched as the
    conversation reads (a match may span tokens: `capital of France`); explanation text
    per token (a match there marks that token); note text (a match marks the note's span)."""
    toks = state.tokens
    starts, parts, pos = [], [], 0
    for i in indices:
        starts.append(pos)
        parts.append(toks[i].text)
        pos += len(toks[i].text)
    text = "".join(parts)
    spans: set[tuple[int, int]] = set()
    for m in pattern.finditer(text):
        if m.end() == m.start():
            continue
        a = bisect_right(starts, m.start()) - 1
        b = bisect_right(starts, m.end() - 1) - 1
        spans.add((indices[a], indices[b]))
    for i in indices:
        best = state.best(i)
        if best is not None and pattern.search(best.text):
            spans.add((i, i))
    shown = set(indices)
    for n in state.notes:  # a note's text marks the tokens it is on (the shown branch's notes)
        if n.branch == state.note_branch and pattern.search(n.text) and (n.start in shown or n.end in shown):
            spans.add((n.start, n.end))
    return sorted(spans)


def ranking(state: UiState, kind: str, indices: Iterable[int]) -> list[int]:
    """Token indices, most interesting first: lowest fidelity (explained and scored
    tokens only), highest activation norm, or largest surprise. Special tokens
    (<bos>, turn markers) are left out: their activations are outliers by nature."""
    toks = state.tokens
    idx = [i for i in indices if toks[i].role not in SPECIAL_ROLES]
    if kind == "fidelity":
        scored = [(b.score.fidelity, i) for i in idx
                  if (b := state.best(i)) is not None and b.score is not None]
        return [i for _, i in sorted(scored)]
    if kind == "norm":
        return sorted(idx, key=lambda i: (-toks[i].norm, i))
    if kind == "surprise":
        s = surprise(toks)
        return sorted((i for i in idx if s[i] is not None), key=lambda i: (-s[i], i))  # type: ignore[operator]
    raise ValueError(kind)


def step(order: Sequence[int], current: int, direction: int) -> int | None:
    """The next (direction +1) or previous (-1) entry of `order` from `current`: from a
    token not in the order, +1 goes to the first and -1 to the last."""
    if not order:
        return None
    try:
        k = order.index(current) + direction
    except ValueError:
        k = 0 if direction > 0 else len(order) - 1
    return order[max(0, min(len(order) - 1, k))]


def next_match(matches: Sequence[tuple[int, int]], current: int, direction: int) -> int | None:
    """The first token of the next match after the cursor (wrapping), or the previous."""
    if not matches:
        return None
    if direction > 0:
        return next((a for a, _ in matches if a > current), matches[0][0])
    return next((a for a, _ in reversed(matches) if a < current), matches[-1][0])


def span_around(tokens: Sequence[TokenInfo], index: int) -> list[int]:
    """The run of tokens of the same role and turn around `index` (one tool call, one
    tool result, one message's text)."""
    role, turn = tokens[index].role, tokens[index].turn
    a = b = index
    while a > 0 and tokens[a - 1].role == role and tokens[a - 1].turn == turn:
        a -= 1
    while b + 1 < len(tokens) and tokens[b + 1].role == role and tokens[b + 1].turn == turn:
        b += 1
    return list(range(a, b + 1))


def scope_indices(state: UiState, scope: str, cursor: int, shown: Sequence[int]) -> list[int]:
    """Tokens for a limited explain-all, in order: the cursor's role, turn or span, or the
    MOST_SURPRISING most surprising tokens (of those shown)."""
    toks = state.tokens
    if scope == "role":
        out = [i for i in shown if toks[i].role == toks[cursor].role]
    elif scope == "turn":
        out = [i for i in shown if toks[i].turn == toks[cursor].turn]
    elif scope == "span":
        keep = set(span_around(toks, cursor))
        out = [i for i in shown if i in keep]
    elif scope == "surprising":
        out = sorted(ranking(state, "surprise", shown)[:MOST_SURPRISING])
    else:
        raise ValueError(scope)
    return out
