"""The explanation pane's branch lines (issue 26 item 1): on a branch, whether the edit
changed the token under the cursor or which parent token it pairs with (and how far the
edit moved the activation there); with P, the parent's side beside this one: both
tokens, both scores (fve) and both explanations. Pure (reads UiState), like the pane."""

from __future__ import annotations

from rich.text import Text

from ...core.branch_tree import Branch
from ...core.caveats import position_caveats, verdict
from ...core.types import Explanation
from ...terminal_text import visible
from ..state import UiState
from .strip_layout import display_text

COLUMN = 18  # cells of each side's column in the comparison rows
CHANGED_STYLE = "bold #5fffff"  # the strip's diff mark (token_strip.py) and its lines here


def _fve(ex: Explanation | None, label: str) -> str:
    """fve_nrm (cos where the pair has no variance baseline) and the verdict."""
    if ex is None:
        return "not explained"
    if ex.score is None:
        return "not scored"
    value = ex.score.fve_nrm if ex.score.fve_nrm is not None else ex.score.cos
    return f"{value:.3f} {label}"


def _cell(text: str) -> str:
    return (text[:COLUMN - 1] + "…" if len(text) > COLUMN else text).ljust(COLUMN)


def branch_lines(state: UiState, index: int) -> Text:
    """What the pane says about token `index` as a token of the shown branch ("" on the root)."""
    out = Text()
    side = state.parent_side(index)
    if side is None:
        return out
    parent, j = side
    branch = state.current_branch
    out.append(f"⑂ branch {branch}", style="bold")
    label = state.shown_branch.label if state.shown_branch is not None else ""
    if label:
        out.append(f" “{visible(label, keep_layout=False)[:30]}”")
    if index in state.changed:
        out.append(" · changed by the edit", style=CHANGED_STYLE)
    if j is None:
        out.append(" · no counterpart in the parent\n", style="dim")
    else:
        cos = state.diff.cos.get(index) if state.diff is not None else None
        out.append(f" · parent {parent.id} #{j}" + ("" if cos is None else f" · cos {cos:.3f} to it"), style="dim")
        out.append("" if state.compare_parent else "  (P: beside it)", style="dim")
        out.append("\n")
    if state.compare_parent:
        out.append_text(_beside_parent(state, index, parent, j))
    return out


def _beside_parent(state: UiState, index: int, parent_branch: Branch, j: int | None) -> Text:
    mine = state.best(index)
    parent = parent_branch.id
    theirs = parent_branch.best(j) if j is not None else None
    their_text = parent_branch.tokens[j].text if j is not None else None
    # The parent's label from its own position (its tokens; the median norm is the shown one's).
    their_label = "" if theirs is None or theirs.score is None else \
        verdict(theirs.score, position_caveats(parent_branch.tokens, j, state.median_norm))
    t = Text()
    t.append(" " * 7 + _cell(f"branch {state.current_branch}") + _cell(f"parent {parent}") + "\n", style="bold")
    t.append("token  ", style="dim")
    t.append(_cell(f"“{display_text(state.tokens[index].text)}” #{index}"))
    t.append(_cell("—" if j is None else f"“{display_text(their_text or '')}” #{j}") + "\n")
    t.append("fve    ", style="dim")
    t.append(_cell(_fve(mine, state.verdict(mine) if mine is not None and mine.score is not None else ""))
             + _cell("—" if j is None else _fve(theirs, their_label)) + "\n")
    for who, ex in ((f"branch {state.current_branch}", mine), (f"parent {parent}", theirs if j is not None else None)):
        t.append(f"{who}: ", style="bold")
        if ex is None:
            why = ("the edit inserted this token" if j is None and who.startswith("parent") else
                   "not in this session (L loads the models)" if state.read_only else "e explains both sides")
            t.append(f"({why})\n", style="dim")
        else:
            t.append(visible(ex.text.strip()) + "\n")
    return t
