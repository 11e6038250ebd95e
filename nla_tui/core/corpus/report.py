"""`nla-tui report DIR`: one self-contained HTML page about a sweep (no network, no script):
fve and specificity histograms by role (inline SVG), the most and least faithful
explanations, the most frequent phrases, a table per conversation. The page reuses the
session export's style, colours and escaping (core/store/export.py)."""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from pathlib import Path
from statistics import mean
from typing import Any, Sequence

from ..caveats import UNRELIABLE
from ..store.export import _CSS, _h, fidelity_colour
from .shards import read_manifest, read_rows

REPORT_CSS = """
section.block{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:10px 14px;margin:14px 20px}
section.block h2{font-size:16px;margin:0 0 8px}.hists{display:flex;flex-wrap:wrap;gap:14px}
figure{margin:0}figcaption{font-size:12px;color:#555}
table.rows{border-collapse:collapse;font-size:13px;width:100%}
table.rows th,table.rows td{border-bottom:1px solid #eee;padding:3px 6px;text-align:left;vertical-align:top}
table.rows td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.ctx{font-family:ui-monospace,monospace;font-size:12px;color:#555}.ctx b{color:#000;background:#ffe08a}
.stats span{display:inline-block;margin-right:18px}
"""
TOP = 12
MAX_CONVERSATIONS = 1000  # rows of the per-conversation table (the least faithful first beyond that)
REPORT_COLUMNS = ["conversation_id", "conversation", "token_index", "token_text", "role", "context_before",
                  "context_after", "explanation", "closed", "fve_nrm", "label", "verdict", "specificity", "prior_fve",
                  "surprise"]


def _verdict(r: dict[str, Any]) -> str:
    """core.caveats' verdict as the sweep stored it (an older sweep's rows: the plain label)."""
    return r.get("verdict") or r.get("label") or ""


def _f(v: float | None, nd: int = 2) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def _mean(vals: Sequence[float | None]) -> float | None:
    xs = [v for v in vals if v is not None]
    return mean(xs) if xs else None


def svg_histogram(values: Sequence[float], lo: float, hi: float, bins: int = 20, colour_by_value: bool = True,
                  width: int = 300, height: int = 110) -> str:
    """Bars over [lo, hi] (values outside go to the end bins), counts on hover."""
    counts = [0] * bins
    for v in values:
        k = int((min(max(v, lo), hi) - lo) / (hi - lo) * bins) if hi > lo else 0
        counts[min(k, bins - 1)] += 1
    top = max(counts) or 1
    plot_h, bw = height - 18, width / bins
    bars = []
    for k, c in enumerate(counts):
        h = plot_h * c / top
        mid = lo + (k + 0.5) * (hi - lo) / bins
        fill = fidelity_colour(mid) if colour_by_value else "#90a4ae"
        bars.append(f'<rect x="{k * bw:.1f}" y="{plot_h - h:.1f}" width="{bw - 1:.1f}" height="{h:.1f}" '
                    f'fill="{fill}"><title>{lo + k * (hi - lo) / bins:.2f}…{lo + (k + 1) * (hi - lo) / bins:.2f}: '
                    f'{c}</title></rect>')
    axis = (f'<text x="0" y="{height - 3}" font-size="10">{lo:g}</text>'
            f'<text x="{width}" y="{height - 3}" font-size="10" text-anchor="end">{hi:g}</text>'
            f'<text x="{width / 2}" y="{height - 3}" font-size="10" text-anchor="middle">n={len(values)}, '
            f'max bin {top}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img">{"".join(bars)}{axis}</svg>')


_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")


def frequent_phrases(texts: Sequence[str], n: int = 3, top: int = 20) -> list[tuple[str, int]]:
    """Word n-grams by the number of explanations they occur in (each counted once per text)."""
    seen: Counter[str] = Counter()
    for t in texts:
        words = [w.lower() for w in _WORD.findall(t)]
        seen.update({" ".join(words[i:i + n]) for i in range(len(words) - n + 1)})
    return seen.most_common(top)


def _row_table(rows: list[dict[str, Any]]) -> str:
    body = []
    for r in rows:
        ctx = (f'{_h(r["context_before"][-40:])}<b>{_h(r["token_text"])}</b>{_h(r["context_after"][:20])}')
        colour = fidelity_colour(r["fve_nrm"]) if r["fve_nrm"] is not None else "#eee"
        body.append(f'<tr><td>{_h(r["conversation_id"])}</td><td class="n">{r["token_index"]}</td>'
                    f'<td>{_h(r["role"])}</td><td class="ctx">{ctx}</td><td>{_h(r["explanation"])}</td>'
                    f'<td class="n" style="background:{colour}">{_f(r["fve_nrm"])}</td>'
                    f'<td>{_h(_verdict(r))}</td><td class="n">{_f(r["specificity"])}</td></tr>')
    return ('<table class="rows"><tr><th>conversation</th><th>token</th><th>role</th><th>context</th>'
            '<th>explanation</th><th>fve</th><th>verdict</th><th>specificity</th></tr>' + "".join(body) + "</table>")


def _table_conversations(convs: dict[str, list[dict]]) -> list[tuple[str, list[dict]]]:
    """In input order; beyond MAX_CONVERSATIONS, the least faithful ones (by mean fve)."""
    items = list(convs.items())
    if len(items) > MAX_CONVERSATIONS:
        items = sorted(items, key=lambda kv: _mean([r["fve_nrm"] for r in kv[1]]) or 0.0)[:MAX_CONVERSATIONS]
    return sorted(items, key=lambda kv: kv[1][0]["conversation"])


def to_report_html(out: Path) -> str:
    manifest = read_manifest(out) or {}
    rows = read_rows(out, REPORT_COLUMNS)
    info = manifest.get("model_info", {})
    scored = [r for r in rows if r["fve_nrm"] is not None]
    by_role: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_role[r["role"]].append(r)
    hists = []
    for role, rs in sorted(by_role.items()):
        fve = [r["fve_nrm"] for r in rs if r["fve_nrm"] is not None]
        spec = [r["specificity"] for r in rs if r["specificity"] is not None]
        hists.append(f'<figure>{svg_histogram(fve, -0.5, 1.0)}<figcaption>fve_nrm, role {_h(role)} '
                     f'(mean {_f(_mean(fve))})</figcaption></figure>')
        if spec:
            hists.append(f'<figure>{svg_histogram(spec, -0.5, 1.5, colour_by_value=False)}<figcaption>'
                         f'specificity, role {_h(role)} (mean {_f(_mean(spec))}; &gt;0: '
                         f'{sum(s > 0 for s in spec) / len(spec):.0%})</figcaption></figure>')
    ranked = sorted(scored, key=lambda r: -r["fve_nrm"])
    phrases = "".join(f'<tr><td>{_h(p)}</td><td class="n">{c}</td><td class="n">{c / max(1, len(rows)):.0%}</td></tr>'
                      for p, c in frequent_phrases([r["explanation"] for r in rows]))
    convs: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        convs[r["conversation_id"]].append(r)
    conv_rows = "".join(
        f'<tr><td>{_h(cid)}</td><td class="n">{len(rs)}</td>'
        f'<td class="n">{_f(_mean([r["fve_nrm"] for r in rs]))}</td>'
        f'<td class="n">{_f(min((r["fve_nrm"] for r in rs if r["fve_nrm"] is not None), default=None))}</td>'
        f'<td class="n">{_f(_mean([r["specificity"] for r in rs]))}</td>'
        f'<td class="n">{_f(_mean([r["prior_fve"] for r in rs]))}</td>'
        f'<td class="n">{_f(_mean([r["surprise"] for r in rs]))}</td></tr>'
        for cid, rs in _table_conversations(convs))
    plan = manifest.get("plan", {})
    stats = (f'<span>rows <b>{len(rows):,}</b> of {plan.get("positions", "?"):,} planned</span>'
             if isinstance(plan.get("positions"), int) else f"<span>rows <b>{len(rows):,}</b></span>")
    stats += (f'<span>mean fve_nrm <b>{_f(_mean([r["fve_nrm"] for r in rows]))}</b></span>'
              f'<span>mean specificity <b>{_f(_mean([r["specificity"] for r in rows]))}</b></span>'
              f'<span>mean prior fve <b>{_f(_mean([r["prior_fve"] for r in rows]))}</b></span>'
              f'<span>closed <b>{sum(r["closed"] for r in rows) / max(1, len(rows)):.0%}</b></span>'
              f'<span>unreliable (a high score where core.caveats flags the position) '
              f'<b>{sum(_verdict(r) == UNRELIABLE for r in rows):,}</b></span>')
    models = (f'subject {info.get("subject", "?")}, layer {info.get("layer", "?")}; AV {info.get("av", "?")}; '
              f'AR {info.get("ar", "?")}; {info.get("quant", "?")} on {info.get("device", "?")}')
    note = f'<div class="meta pair">About the pair: {_h(info["pair_note"])}.</div>' if info.get("pair_note") else ""
    title = _h(f"Sweep of {Path(manifest.get('input', str(out))).name}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · nla-tui</title><style>{_CSS}{REPORT_CSS}</style></head>
<body><header><h1>{title}</h1>
<div class="meta">{_h(models)} · {len(convs)} conversations · started {_h(manifest.get("started", "?"))}</div>
{note}<div class="meta">specificity = fve own − mean fve of {_h(str(manifest.get("identity", {}).get("controls", {}).get("others", "K")))} other positions of the same conversation and role; prior = fve of the content-free explanation {_h(repr(manifest.get("identity", {}).get("controls", {}).get("prior_text")))} (docs/CORPUS.md)</div></header>
<section class="block"><h2>Summary</h2><div class="stats">{stats}</div></section>
<section class="block"><h2>Fidelity and specificity by role</h2><div class="hists">{"".join(hists)}</div></section>
<section class="block"><h2>Most faithful</h2>{_row_table(ranked[:TOP])}</section>
<section class="block"><h2>Least faithful</h2>{_row_table(ranked[::-1][:TOP])}</section>
<section class="block"><h2>Most frequent phrases (explanations containing each)</h2>
<table class="rows"><tr><th>phrase</th><th>explanations</th><th>share</th></tr>{phrases}</table></section>
<section class="block"><h2>Conversations{f" (the {MAX_CONVERSATIONS:,} least faithful of {len(convs):,})" if len(convs) > MAX_CONVERSATIONS else ""}</h2><table class="rows"><tr><th>conversation</th><th>rows</th>
<th>mean fve</th><th>min fve</th><th>mean specificity</th><th>mean prior</th><th>mean surprise</th></tr>{conv_rows}</table></section>
</body></html>
"""


def write_report(out: Path, target: Path | None = None) -> Path:
    from ..store.session_files import _write_atomic as write_atomic

    path = Path(target) if target else Path(out) / "report.html"
    write_atomic(path, to_report_html(Path(out)).encode("utf-8"))
    return path
