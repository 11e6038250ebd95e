"""The branch tree (core/branch_tree.py) in exports: a Markdown section and an HTML
section per branch (the edited message before and after, the branch's tokens with the
changed ones marked, each explained token beside its parent counterpart); JSON carries
the session's `branches` and adds each branch's changed positions. Every text is data:
Markdown escapes it (md_inline), HTML escapes it and shows control characters visibly."""

from __future__ import annotations

import html

from ...terminal_text import visible
from ..branch_tree import Branch, BranchTree
from ..types import Explanation
from .markdown_text import md_inline, md_quote
from .transcript import message_display_text


def _h(text: str) -> str:
    return html.escape(visible(text))


def _fve(e: Explanation | None) -> str:
    if e is None or e.score is None:
        return ""
    return f"{e.score.fidelity:.3f}"


def _heading(tree: BranchTree, b: Branch) -> str:
    return (f"Branch {b.id} (from {b.parent}): message {b.edited} edited"
            + (f" — {b.label}" if b.label else ""))


def _rows(tree: BranchTree, b: Branch) -> list[tuple[int, str, int | None, Explanation | None, Explanation | None]]:
    """(index, token, parent index, this branch's best, the parent's best) for every token
    explained on either side."""
    d = tree.diff(b.id)
    parent = tree.get(b.parent)
    back = {j: i for i, j in d.aligned.items()}
    indices = sorted(set(b.explanations) | {back[j] for j in parent.explanations if j in back})
    return [(i, b.tokens[i].text, d.aligned.get(i), b.best(i),
             parent.best(d.aligned[i]) if i in d.aligned else None) for i in indices]


def branches_markdown(tree: BranchTree) -> list[str]:
    branches = [b for b in tree.ordered() if not b.is_root]
    if not branches:
        return []
    lines = ["## Branches", "",
             "The conversation above is branch 0, as captured. Each branch re-reads its parent with one "
             "message edited (the later messages kept); changed tokens are in **bold**, and every token "
             "explained on either side is listed beside its parent counterpart.", ""]
    for b in branches:
        d, parent = tree.diff(b.id), tree.get(b.parent)
        changed = set(d.changed)
        flow = "".join(f"**{md_inline(t.text)}**" if t.index in changed and t.text.strip() else md_inline(t.text)
                       for t in b.tokens)
        lines += [f"### {md_inline(_heading(tree, b))}", "",
                  f"- created {md_inline(b.created)}; {len(b.tokens)} tokens, {len(d.changed)} changed "
                  f"(first at {d.first_changed}), {len(d.removed)} of the parent's gone", "",
                  "Before:", "", md_quote(message_display_text(parent.messages[b.edited])), "",
                  "After:", "", md_quote(message_display_text(b.messages[b.edited])), "",
                  "Tokens:", "", flow, ""]
        rows = _rows(tree, b)
        if rows:
            lines += ["| # | token | parent # | explanation here | fve | explanation in the parent | fve |",
                      "|---:|---|---:|---|---:|---|---:|"]
            for i, text, j, mine, theirs in rows:
                lines.append(f"| {i} | {md_inline(text) or ' '} | {'' if j is None else j} | "
                             f"{md_inline(mine.text) if mine else ''} | {_fve(mine)} | "
                             f"{md_inline(theirs.text) if theirs else ''} | {_fve(theirs)} |")
            lines.append("")
    return lines


def branches_html(tree: BranchTree) -> str:
    branches = [b for b in tree.ordered() if not b.is_root]
    if not branches:
        return ""
    parts = ['<section id="branches"><h2>Branches</h2><p class="meta">The conversation above is branch 0. '
             "Each branch re-reads its parent with one message edited; changed tokens are marked.</p>"]
    for b in branches:
        d, parent = tree.diff(b.id), tree.get(b.parent)
        changed = set(d.changed)
        flow = "".join(f"<mark>{_h(t.text)}</mark>" if t.index in changed else _h(t.text) for t in b.tokens)
        rows = "".join(
            f"<tr><td>{i}</td><td>{_h(text)}</td><td>{'' if j is None else j}</td>"
            f"<td>{_h(mine.text) if mine else ''}</td><td>{_fve(mine)}</td>"
            f"<td>{_h(theirs.text) if theirs else ''}</td><td>{_fve(theirs)}</td></tr>"
            for i, text, j, mine, theirs in _rows(tree, b))
        table = ("<table class=\"branches\"><tr><th>#</th><th>token</th><th>parent #</th><th>explanation here</th>"
                 "<th>fve</th><th>explanation in the parent</th><th>fve</th></tr>" + rows + "</table>") if rows else ""
        parts.append(
            f'<div class="branch" id="branch-{b.id}"><h3>{_h(_heading(tree, b))}</h3>'
            f'<div class="meta">{_h(b.created)} · {len(b.tokens)} tokens, {len(d.changed)} changed</div>'
            f"<p><b>Before:</b> <span class=\"msg\">{_h(message_display_text(parent.messages[b.edited]))}</span><br>"
            f"<b>After:</b> <span class=\"msg\">{_h(message_display_text(b.messages[b.edited]))}</span></p>"
            f'<div class="flow">{flow}</div>{table}</div>')
    return "".join(parts) + "</section>"


def branch_changes_json(tree: BranchTree) -> dict[int, dict[str, list[int]]]:
    """Per branch id: its changed positions and the parent's removed ones (JSON export)."""
    out = {}
    for b in tree.ordered():
        if not b.is_root:
            d = tree.diff(b.id)
            out[b.id] = {"changed": d.changed, "removed": d.removed}
    return out


BRANCHES_CSS = ("#branches{padding:0 20px}.branch .flow{white-space:pre-wrap;font-family:monospace;"
                "background:#fff;border:1px solid #ddd;padding:6px;border-radius:4px}"
                ".branch mark{background:#ffe082}.branch .msg{white-space:pre-wrap}")
