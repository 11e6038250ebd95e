"""Flow tokens into rows for the token strip (pure, no Textual).

Each turn starts a new row with its role in a gutter; a token containing a
newline ends its row, so the strip reads like the conversation. Layout is O(T)
and only redone when tokens, width or the special-token toggle change; cursor
moves never relayout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from rich.cells import cell_len

from ...core.types import TokenInfo
from ...terminal_text import visible

GUTTER = 6  # "model" + a bar
SPECIAL_ROLES = ("bos", "special")
_ROLE_TAGS = {"bos": "bos", "special": "", "system": "sys", "user": "user", "model": "model",
              "tool_call": "call", "tool_result": "tool"}



def _unknown_role_tag(role: str) -> str:
    """A role read from a file that nla-tui did not write: shown, never obeyed."""
    return visible(role[:5], keep_layout=False)

def display_text(text: str) -> str:
    """Make whitespace and control characters visible in one cell each."""
    if text == "":
        return "∅"
    out = []
    for ch in text:
        if ch == "\n":
            out.append("↵")
        elif ch == "\t":
            out.append("⇥")
        elif ch == "\r":
            out.append("␍")
        else:
            out.append(ch)
    return visible("".join(out), keep_layout=False)  # ␛, ␇, … : one visible cell each


@dataclass
class Cell:
    index: int  # token index
    x: int  # column after the gutter
    text: str  # display text (fits the row)


@dataclass
class Row:
    turn: int
    tag: str  # gutter text: role on a turn's first row, "" after
    role: str
    cells: list[Cell] = field(default_factory=list)
    pending: str | None = None  # streaming reply text (no tokens yet)


@dataclass
class Layout:
    rows: list[Row]
    row_of: list[int]  # token index -> row, -1 when hidden
    visible: list[int]  # visible token indices in order
    width: int


def layout_tokens(
    tokens: Sequence[TokenInfo],
    width: int,
    show_special: bool,
    role_of_turn: Callable[[int], str],
    only_role: str | None = None,
) -> Layout:
    """Rows of the strip. `only_role` (the role filter) keeps that role's tokens only."""
    avail = max(4, width - GUTTER)
    rows: list[Row] = []
    row_of = [-1] * len(tokens)
    visible: list[int] = []
    cur: Row | None = None
    x = 0
    for tok in tokens:
        if (not show_special and tok.role in SPECIAL_ROLES) or (only_role and tok.role != only_role):
            continue
        text = display_text(tok.text)
        w = cell_len(text)
        if w > avail:  # a very long token gets its own row, clipped
            text = text[: avail - 1] + "…"
            w = cell_len(text)
        # A new row (with its role in the gutter) for every turn, and within a turn
        # wherever the role changes (an assistant's text, then its tool call).
        special = tok.role in SPECIAL_ROLES
        if cur is None or tok.turn != cur.turn or (not special and tok.role != cur.role):
            role = role_of_turn(tok.turn) if special else tok.role
            if cur is None or cur.cells:  # reuse the empty row a newline left behind
                cur = Row(turn=0, tag="", role=role)
                rows.append(cur)
            cur.turn, cur.tag, cur.role = tok.turn, _ROLE_TAGS.get(role) or _unknown_role_tag(role), role
            x = 0
        elif x + w > avail:
            cur = Row(turn=tok.turn, tag="", role=cur.role)
            rows.append(cur)
            x = 0
        cur.cells.append(Cell(tok.index, x, text))
        row_of[tok.index] = len(rows) - 1
        visible.append(tok.index)
        x += w
        if "\n" in tok.text:
            cur = Row(turn=tok.turn, tag="", role=cur.role)
            rows.append(cur)
            x = 0
    # A trailing newline leaves an empty row: keep it only if it is not last.
    while rows and not rows[-1].cells and rows[-1].pending is None:
        rows.pop()
    return Layout(rows=rows, row_of=row_of, visible=visible, width=width)


def layout_pending(text: str, width: int, continues_model_turn: bool) -> list[Row]:
    """Rows for reply text that has streamed in but is not tokenised yet."""
    avail = max(4, width - GUTTER)
    shown = display_text(text)
    rows: list[Row] = []
    line = ""
    for ch in shown:
        if cell_len(line) + cell_len(ch) > avail:
            rows.append(line)
            line = ""
        line += ch
        if ch == "↵":
            rows.append(line)
            line = ""
    rows.append(line)
    out = []
    for i, chunk in enumerate(rows):
        tag = "model" if i == 0 and not continues_model_turn else ""
        out.append(Row(turn=-2, tag=tag, role="model", pending=chunk))
    return out
