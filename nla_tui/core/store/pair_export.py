"""The extra AV/AR pair in exports (--extra-pair; core/pair_jobs.py): a Markdown section and
an HTML section with one row per token it explained, beside the main pair's table; JSON
carries the session's own `extra_pair` and `extra_explanations`. Its text is data: Markdown
escapes it (md_inline), HTML escapes it and shows control characters visibly."""

from __future__ import annotations

import html

from ...terminal_text import visible
from ..caveats import median_norm, position_caveats, verdict
from ..types import group_by_index
from .markdown_text import md_inline


def _h(text: str) -> str:
    return html.escape(visible(text))


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.3f}"


def pair_title(session) -> str:
    pair = session.extra_pair
    m = pair.models
    return f"Extra pair: {pair.label} (layer {m.layer}; AV {m.av}, AR {m.ar})"


def _rows(session):
    """(token, best explanation, verdict) per token the extra pair explained, in order."""
    median = median_norm(session.tokens)
    by_index = group_by_index(session.pair_explanations)
    for t in session.tokens:
        es = by_index.get(t.index)
        if not es:
            continue
        best = max(es, key=lambda e: e.score.fidelity if e.score else -9)
        judged = verdict(best.score, position_caveats(session.tokens, t.index, median)) if best.score else ""
        yield t, best, judged


def pair_markdown(session) -> list[str]:
    """A section naming the pair, one table row per token it explained."""
    if session.extra_pair is None:
        return []
    lines = [f"## {md_inline(pair_title(session))}", "",
             "| # | token | explanation | cos | fve_nrm | verdict | warnings |", "|---:|---|---|---:|---:|---|---|"]
    for t, e, judged in _rows(session):
        s = e.score
        lines.append(f"| {t.index} | {md_inline(t.text)} | {md_inline(e.text)} | {_fmt(s.cos) if s else ''} | "
                     f"{_fmt(s.fve_nrm) if s else ''} | {judged} | {md_inline('; '.join(e.warnings))} |")
    if len(lines) == 4:
        lines.append("| | | (no token explained with this pair yet) | | | | |")
    return lines + [""]


def pair_html(session) -> str:
    if session.extra_pair is None:
        return ""
    rows = "".join(f'<tr><td><a href="#click={t.index}">{t.index}</a></td><td>{_h(t.text)}</td>'
                   f'<td class="pairtext">{_h(e.text)}</td><td>{_fmt(e.score.cos) if e.score else ""}</td>'
                   f'<td>{_fmt(e.score.fve_nrm) if e.score else ""}</td><td>{_h(judged)}</td></tr>'
                   for t, e, judged in _rows(session))
    return (f'<section id="extra-pair"><h2>{_h(pair_title(session))}</h2><table><tr><th>#</th><th>token</th>'
            f'<th>explanation</th><th>cos</th><th>fve_nrm</th><th>verdict</th></tr>{rows}</table></section>')


PAIR_CSS = "#extra-pair{padding:0 20px}#extra-pair td{padding:2px 6px;vertical-align:top}"
