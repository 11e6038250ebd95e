"""Steered continuations in exports (Markdown and HTML); JSON carries them as the session's
`steered` list. Kept apart from export.py so their rendering has one home."""

from __future__ import annotations

import html
from itertools import groupby

from ..steer_results import SteerResult, number_text, token_diff
from .markdown_text import md_inline


def _md(text: str) -> str:
    return md_inline(text)


def _top(cands) -> str:
    return ", ".join(f"{c.text!r} {c.prob:.2f}" for c in cands)


def _marked_md(pieces: list[tuple[str, bool]]) -> str:
    """Changed runs in **bold**."""
    runs = ("".join(t for t, _ in group) for _, group in groupby(pieces, key=lambda p: p[1]))
    flags = (ch for ch, _ in groupby(pieces, key=lambda p: p[1]))
    return "".join(f"**{_md(r)}**" if ch and r.strip() else _md(r) for r, ch in zip(runs, flags))


def vector_line(b: SteerResult) -> str:
    """Where the vector came from, the layer, ‖v‖ added and what α multiplies (one line)."""
    return f"{b.source_text} · layer {b.layer} · ‖v‖ {number_text(b.vector_norm)} · α × {b.unit_text}"


def steered_markdown(results: list[SteerResult]) -> list[str]:
    if not results:
        return []
    lines = ["## Steered continuations", "",
             "Each regenerates from one token with a steering vector added at layer K: its direction × α × "
             "its unit (the token's activation norm for an edited explanation, AR(edited) − AR(original); "
             "the layer's median activation norm for a file, a − b of two tokens or an SAE feature). "
             "Changed words in **bold**.", ""]
    for n, b in enumerate(results, 1):
        left, right = token_diff(b.original_tokens, b.steered_tokens)
        on = f" of branch {b.branch}" if b.branch is not None else ""
        lines += [f"### {n}. token {b.index}{on} {_md(repr(b.token_text))}, α = {b.alpha:g}, span {b.span}", "",
                  f"- vector: {_md(vector_line(b))}"]
        lines += [f"- warning: {_md(w)}" for w in (b.source or {}).get("warnings", [])]
        if b.source_kind == "text":
            lines += [f"- original explanation: {_md(b.original_explanation)}",
                      f"- edited explanation: {_md(b.edited_explanation)}"]
        lines += [f"- next-token top-5 before: {_md(_top(b.before))}",
                  f"- next-token top-5 after: {_md(_top(b.after))}",
                  f"- original continuation: {_marked_md(left) if left else '(none)'}",
                  f"- steered continuation: {_marked_md(right) if right else '(none)'}", ""]
    return lines


def _marked_html(pieces: list[tuple[str, bool]]) -> str:
    return "".join(f"<mark>{html.escape(t)}</mark>" if ch else html.escape(t) for t, ch in pieces)


def steered_html(results: list[SteerResult]) -> str:
    if not results:
        return ""
    rows = []
    for b in results:
        left, right = token_diff(b.original_tokens, b.steered_tokens)
        rows.append(
            f"<tr><td>{b.index}{'' if b.branch is None else f' (branch {b.branch})'} "
            f"{html.escape(repr(b.token_text))}<br>α {b.alpha:g} · {html.escape(b.span)}</td>"
            f"<td>{html.escape(vector_line(b))}" + "".join(f"<br>⚠ {html.escape(w)}" for w in
                                                        (b.source or {}).get("warnings", []))
            + (f"<hr>{html.escape(b.original_explanation)}<hr>{html.escape(b.edited_explanation)}"
               if b.source_kind == "text" else "") + "</td>"
            f"<td>{html.escape(_top(b.before))}<hr>{html.escape(_top(b.after))}</td>"
            f"<td>{_marked_html(left)}<hr>{_marked_html(right)}</td></tr>")
    return ('<section id="steered"><h2>Steered continuations</h2><table class="steered">'
            "<tr><th>token</th><th>vector (explanation: original / edited)</th><th>top-5: before / after</th>"
            "<th>continuation: original / steered</th></tr>" + "".join(rows) + "</table></section>")
