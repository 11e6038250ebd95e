"""Which positions of a conversation a sweep explains (pure: no model, no torch).

Policies combine, applied in this order (docs/CORPUS.md):
  1. roles      token roles to keep (default: the content roles, not <bos> or template tokens;
                `all` keeps every token; `assistant` = the model's text and its tool calls)
  2. regex      a Python regex over the token's text, or over its neighbourhood (the
                `context` tokens either side and the token itself, joined as the text reads)
  3. every      every k-th of what is left
  4. surprising the N most surprising of what is left (needs the subject's capture: the
                count is known before, which tokens only after)
  5. max        at most M per conversation, evenly spaced over what is left

Surprise at position i is -log p(token i+1 | tokens ≤ i) from the top-5 candidates captured
at i (the UI's jump key and this share `surprise`).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Sequence

from ..errors import InputError
from ..types import ROLES, TokenInfo

CONTENT_ROLES = ("system", "user", "model", "tool_call", "tool_result")
ROLE_ALIASES = {"assistant": ("model", "tool_call"), "tool": ("tool_result",), "all": ROLES,
                "content": CONTENT_ROLES}


def surprise(tokens: Sequence[TokenInfo]) -> list[float | None]:
    """-log p(next token) at each position; None for the last token or without candidates.
    When the next token is not among the top 5 its probability is at most
    min(p5, 1 − Σ top-5), and that bound is used."""
    out: list[float | None] = []
    for i, t in enumerate(tokens):
        if i + 1 >= len(tokens) or not t.top:
            out.append(None)
            continue
        nxt = tokens[i + 1].token_id
        p = next((c.prob for c in t.top if c.token_id == nxt), None)
        if p is None:
            p = min(t.top[-1].prob, max(0.0, 1.0 - sum(c.prob for c in t.top)))
        out.append(-math.log(max(p, 1e-12)))
    return out


@dataclass(frozen=True)
class Selection:
    roles: tuple[str, ...] = CONTENT_ROLES
    regex: str | None = None
    context: int = 0
    every: int = 1
    most_surprising: int | None = None
    max_per_conversation: int | None = None

    def to_json(self) -> dict:
        d = asdict(self)
        d["roles"] = list(self.roles)
        return d

    @property
    def needs_capture(self) -> bool:
        """Whether which positions are chosen depends on the subject's capture."""
        return self.most_surprising is not None


def parse_roles(spec: str | None) -> tuple[str, ...]:
    if not spec:
        return CONTENT_ROLES
    out: list[str] = []
    for word in (w.strip() for w in spec.split(",")):
        roles = ROLE_ALIASES.get(word, (word,) if word in ROLES else None)
        if roles is None:
            known = ", ".join(list(ROLE_ALIASES) + [r for r in ROLES])
            raise InputError(f"--role {word!r} is not a role; use one or more of {known} (comma separated).")
        out += [r for r in roles if r not in out]
    return tuple(out)


def compile_regex(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise InputError(f"--regex {pattern!r} is not a valid regular expression: {e} "
                         f"(Python syntax; quote it for the shell).") from None


def make_selection(role: str | None = None, regex: str | None = None, context: int = 0, every: int = 1,
                   most_surprising: int | None = None, max_per_conversation: int | None = None) -> Selection:
    """A Selection from user flags, every one checked (InputError) before any work starts."""
    if regex is not None:
        compile_regex(regex)
    for name, v, low in (("--regex-context", context, 0), ("--every", every, 1),
                         ("--most-surprising", most_surprising, 1), ("--max-per-conversation", max_per_conversation, 1)):
        if v is not None and v < low:
            raise InputError(f"{name} must be at least {low} (got {v}).")
    return Selection(parse_roles(role), regex, context, every, most_surprising, max_per_conversation)


def select_positions(sel: Selection, texts: Sequence[str], roles: Sequence[str],
                     surprises: Sequence[float | None] | None = None) -> list[int]:
    """The positions to explain. Without `surprises` (before the capture) a `most_surprising`
    policy keeps every candidate that has a next token: the caller counts min(N, that)."""
    keep = [i for i, r in enumerate(roles) if r in sel.roles]
    if sel.regex is not None:
        pattern = compile_regex(sel.regex)
        w = sel.context
        keep = [i for i in keep if pattern.search("".join(texts[max(0, i - w):i + w + 1]))]
    keep = keep[::sel.every]
    if sel.most_surprising is not None:
        keep = [i for i in keep if i + 1 < len(roles)]  # the last token predicts nothing we can see
        if surprises is not None:
            ranked = sorted((i for i in keep if surprises[i] is not None), key=lambda i: (-surprises[i], i))
            keep = sorted(ranked[:sel.most_surprising])
    if sel.max_per_conversation is not None and len(keep) > sel.max_per_conversation:
        m = sel.max_per_conversation
        keep = [keep[(k * len(keep)) // m] for k in range(m)]
    return keep


def planned_count(sel: Selection, texts: Sequence[str], roles: Sequence[str]) -> int:
    """How many positions `select_positions` will return once the capture is known."""
    n = len(select_positions(sel, texts, roles))
    if sel.most_surprising is not None:
        n = min(n, sel.most_surprising)
    return n
