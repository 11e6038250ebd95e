"""Export a session as Markdown, JSON or one self-contained HTML heat map.

Stable API (the TUI and `nla-tui export` call these):
    to_markdown(session) -> str
    to_json(session, include_activations=False) -> str
    to_html(session) -> str
    export_session(session, fmt, out=None) -> Path | str   # writes atomically when out is given

The HTML has no external references (a CSP forbids any network fetch): tokens are
coloured by round-trip fidelity (fve_nrm, else cos) and unexplained tokens in grey by
activation norm; clicking a token shows its explanations and scores. Opening the file
with `#click=N` in the URL selects token N on load (used by the browser test and handy
for sharing a link to one token).
"""

from __future__ import annotations

import contextlib
import html
import os
import re
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ...terminal_text import visible
from ..caveats import Caveat, median_norm, position_caveats, verdict
from ..errors import InputError
from ..fallbacks import with_near_duplicates
from .steer_export import steered_html, steered_markdown
from .branch_export import BRANCHES_CSS, branch_changes_json, branches_html, branches_markdown
from .note_export import NOTES_CSS, inline_notes, note_marker, notes_html, notes_markdown
from .pair_export import PAIR_CSS, pair_html, pair_markdown
from .transcript import message_display_text
from ..types import Explanation, Score, group_by_index
from .jsonsafe import dumps_finite
from .markdown_text import md_inline, md_quote
from .session import Session
from .session_files import check_export_target

FORMATS = ("md", "json", "html")


def best_explanation(explanations: list[Explanation]) -> Explanation | None:
    """The one to colour by: highest fidelity among scored ones, else the latest."""
    scored = [e for e in explanations if e.score is not None]
    if scored:
        return max(scored, key=lambda e: e.score.fidelity)  # type: ignore[union-attr]
    return explanations[-1] if explanations else None


def _by_index(session: Session) -> dict[int, list[Explanation]]:
    """Explanations per token, the cross-position fallback (core/fallbacks.py) made current
    over the whole session: an explanation written alone (the cursor's `e`) learns here that
    other tokens got the same text."""
    return group_by_index(with_near_duplicates(session.explanations, {t.index: t.text for t in session.tokens}))


def _caveats(session: Session) -> dict[int, list[Caveat]]:
    """Why each position's explanation should not be trusted (the TUI pane's warnings)."""
    median = median_norm(session.tokens)
    return {t.index: position_caveats(session.tokens, t.index, median) for t in session.tokens}


def _models_line(session: Session) -> str:
    i = session.info
    preset = f"preset {i.preset}, " if i.preset else ""
    # Which precision ran per model (quant is "nf4" when all three agree, else each named) and
    # the fidelity self-check's verdict for them where it ran.
    check = f"; self-check: {i.fidelity}" if i.fidelity else ""
    return (f"{preset}subject {i.subject}, layer {i.layer}; AV {i.av}; AR {i.ar}; "
            f"{i.quant} on {i.device}{check}")


UNTRAINED_NOTE = ("The AV of this session is untrained (demo pair): its explanations are "
                  "not faithful descriptions of the activations.")

# ------------------------------------------------------------------ markdown

def _md_cell(text: str) -> str:
    return md_inline(text) or " "


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.3f}"


def explanation_with_support(e: Explanation) -> str:
    """The explanation, each sentence followed by its support (how much fidelity the
    explanation loses without it) where per-sentence fidelity was computed."""
    full = e.score.fidelity if e.score else None
    if not e.sentences or full is None:
        return e.text
    return " ".join(f"{p.text} [{_fmt(p.support(full)) or 'n/a'}]" for p in e.sentences)


def to_markdown(session: Session) -> str:
    """The conversation, then one table row per token with its best explanation."""
    lines = [f"# {_md_cell(session.name)}", "", f"- Models: {_md_cell(_models_line(session))}",
             f"- Created {_md_cell(session.created)}, updated {_md_cell(session.updated)}",
             f"- {len(session.tokens)} tokens, {session.n_explained} explained", ""]
    if session.info.untrained_av:
        lines += [f"> **Note:** {UNTRAINED_NOTE}", ""]
    elif session.info.pair_note:
        lines += [f"> **About the pair:** {_md_cell(session.info.pair_note)}.", ""]
    lines += ["## Conversation", ""]
    for m in session.messages:
        lines.append(f"**{_md_cell(m.role)}{_md_cell(f' ({m.name})') if m.name else ''}:**")
        lines.append("")
        lines.append(md_quote(message_display_text(m)))
        lines.append("")
    lines += ["## Tokens", "",
              "| # | token | role | norm | explanation | cos | fve_nrm | verdict | warnings |",
              "|---:|---|---|---:|---|---:|---:|---|---|"]
    expl, caveats = _by_index(session), _caveats(session)
    for t in session.tokens:
        e = best_explanation(expl.get(t.index, []))
        s = e.score if e else None
        # The pane's warnings: the position's (core.caveats), then the explanation's own.
        warned = [c.text for c in caveats[t.index]] + list(e.warnings) if e is not None else []
        lines.append(
            f"| {t.index} | {_md_cell(t.text)} | {_md_cell(t.role)} | {t.norm:.1f} | "
            f"{_md_cell(explanation_with_support(e)) if e else ''} | {_fmt(s.cos) if s else ''} | "
            f"{_fmt(s.fve_nrm) if s else ''} | {verdict(s, caveats[t.index]) if s else ''} | "
            f"{_md_cell('; '.join(warned)) if warned else ''} |")
    lines += [""] + pair_markdown(session) if session.extra_pair else []
    lines += [""] + steered_markdown(session.steered) if session.steered else []
    lines += [""] + notes_markdown(session.notes, {t.index: t.text for t in session.tokens}) if session.notes else []
    lines += [""] + branches_markdown(session.branch_tree()) if session.branches else []
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ json


def to_json(session: Session, include_activations: bool = False) -> str:
    """session.json's content (the current schema_version); activations inline as nested lists
    only on request, since they dwarf everything else."""
    doc: dict[str, Any] = session.to_json()
    # The TUI's warnings and verdicts, made by core.caveats (export only; not in session.json).
    caveats = _caveats(session)
    doc["position_warnings"] = {str(i): [c.text for c in cs] for i, cs in caveats.items() if cs}
    # The cross-position fallback over the whole session, as the pane and Markdown show it.
    flagged = with_near_duplicates(session.explanations, {t.index: t.text for t in session.tokens})
    for e, f in zip(doc.get("explanations", []), flagged):
        e["warnings"] = list(f.warnings)
    for e in doc.get("explanations", []):
        score = Score.from_json(e.get("score"))
        e["verdict"] = verdict(score, caveats.get(e["index"], [])) if score else ""
    acts = session.activations
    doc["activations"] = (acts.tolist() if include_activations and acts is not None else None)
    changes = branch_changes_json(session.branch_tree()) if session.branches else {}
    for b in doc.get("branches", []):
        b.update(changes.get(b["id"], {}))  # which positions the edit changed (the export's, as Markdown marks them)
    # json escapes C0 controls itself; C1 controls, DEL and bidi overrides would reach a
    # terminal raw when the export goes to stdout, so they are \\u-escaped too.
    return _ESCAPE_RAW.sub(lambda m: f"\\u{ord(m.group()):04x}", dumps_finite(doc, "JSON export", indent=1)) + "\n"


_ESCAPE_RAW = re.compile("[\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")

# ------------------------------------------------------------------ html


def fidelity_colour(f: float) -> str:
    """0 (or below) red -> 0.5 yellow -> 1 green; light enough for dark text."""
    f = min(max(f, 0.0), 1.0)
    return f"hsl({120 * f:.0f}, 75%, 72%)"


def _norm_colours(session: Session) -> list[str]:
    """Greys by activation norm, scaled between the 5th and 95th percentile so one huge
    <bos> norm does not wash out the rest."""
    norms = np.array([t.norm for t in session.tokens], dtype=np.float64)
    if norms.size == 0:
        return []
    lo, hi = np.percentile(norms, [5, 95])
    span = hi - lo if hi > lo else 1.0
    return [f"hsl(0, 0%, {96 - 22 * float(np.clip((n - lo) / span, 0, 1)):.0f}%)" for n in norms]


_CSS = """
body{font:15px/1.5 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{padding:12px 20px;background:#fff;border-bottom:1px solid #ddd}
h1{font-size:20px;margin:0 0 4px}.meta{color:#666;font-size:13px}
.warn{background:#fff3cd;border:1px solid #e0c060;padding:6px 10px;margin-top:8px}
.legend span{display:inline-block;padding:0 6px;margin-right:4px;border-radius:3px}
#wrap{display:flex;gap:16px;padding:16px 20px;align-items:flex-start}
#conv{flex:3;min-width:0}#detail{flex:2;position:sticky;top:10px;background:#fff;
border:1px solid #ddd;border-radius:6px;padding:12px;min-height:120px}
.msg{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:8px 10px;margin-bottom:10px}
.role{font-weight:600;font-size:12px;color:#555;text-transform:uppercase}
.toks{white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:14px}
.tok{cursor:pointer;border-radius:2px;outline-offset:-1px}
.tok.special{color:#888;font-size:12px}.tok.sel{outline:2px solid #1565c0}
.exp{border-top:1px solid #eee;padding-top:8px;margin-top:8px}
.exptext{white-space:pre-wrap}.scores{font-size:13px;color:#444}
table.top{font-size:12px;border-collapse:collapse;margin-top:8px}table.top td{padding:0 6px}
table.top caption{text-align:left;color:#666}#detail h2{font-size:17px;margin:0 0 4px}
"""

_JS = r"""
(function(){
  const D = JSON.parse(document.getElementById('nla-data').textContent);
  const detail = document.getElementById('detail');
  function el(tag, cls, text){ const e=document.createElement(tag); if(cls) e.className=cls;
    if(text!==undefined) e.textContent=text; return e; }
  function f3(v){ return (v===null||v===undefined) ? 'n/a' : v.toFixed(3); }
  function show(i){
    const t = D.tokens[i]; if(!t) return;
    document.querySelectorAll('.tok.sel').forEach(x => x.classList.remove('sel'));
    const span = document.querySelector('.tok[data-i="'+i+'"]'); if(span) span.classList.add('sel');
    detail.replaceChildren();
    detail.appendChild(el('h2', null, 'Token ' + i + ': ' + JSON.stringify(t.text)));
    detail.appendChild(el('div', 'scores', t.role + ', turn ' + t.turn + ', norm ' + t.norm.toFixed(2)));
    (t.warnings || []).forEach(function(w){ detail.appendChild(el('div', 'warn', '⚠ ' + w)); });
    (D.notes || []).forEach(function(n){  // notes on this token (the conversation's, not another branch's)
      if((n.branch === undefined || n.branch === null) && n.start <= i && i <= n.end)
        detail.appendChild(el('div', 'note', '✎ ' + n.text)); });
    const ex = D.explanations[i] || [];
    if(!ex.length) detail.appendChild(el('p', 'none', 'Not explained yet.'));
    ex.forEach(function(e){
      const box = el('div', 'exp');
      const full = e.score ? (e.score.fve_nrm !== null ? e.score.fve_nrm : e.score.cos) : null;
      if(e.sentences && full !== null){  // per-sentence fidelity: a sentence the vector supports is darker
        const tx = el('div', 'exptext');
        e.sentences.forEach(function(p){
          const sup = p.without === null ? 0 : full - p.without;
          const sp = el('span', null, p.text + ' ');
          sp.style.opacity = String(0.45 + 0.55 * Math.max(0, Math.min(1, sup / 0.2)));
          sp.title = 'support ' + f3(sup) + ' (fidelity without it ' + f3(p.without) + ', alone ' + f3(p.alone) + ')';
          tx.appendChild(sp); });
        box.appendChild(tx);
      } else box.appendChild(el('div', 'exptext', e.text));
      const s = e.score;
      box.appendChild(el('div', 'scores', s ? ('cos ' + f3(s.cos) + ' · mse_nrm ' + f3(s.mse_nrm) +
        ' · fve_nrm ' + f3(s.fve_nrm) + ' · ' + e.verdict) : 'not scored'));
      box.appendChild(el('div', 'scores', 'temperature ' + e.sampling.temperature + ', seed ' +
        e.sampling.seed + (e.truncated ? ', truncated' : '') + (e.warnings.length ? ', ' + e.warnings.join('; ') : '')));
      detail.appendChild(box);
    });
    if(t.top && t.top.length){
      const tb = el('table', 'top'); tb.appendChild(el('caption', null, 'next-token candidates'));
      t.top.forEach(function(c){ const r=el('tr'); r.appendChild(el('td', null, JSON.stringify(c.text)));
        r.appendChild(el('td', null, (100*c.prob).toFixed(1) + '%')); tb.appendChild(r); });
      detail.appendChild(tb);
    }
    document.body.dataset.selected = String(i);
  }
  document.getElementById('conv').addEventListener('click', function(ev){
    const t = ev.target.closest('.tok'); if(t) show(parseInt(t.dataset.i, 10)); });
  document.addEventListener('keydown', function(ev){
    const cur = parseInt(document.body.dataset.selected || '-1', 10);
    if(ev.key === 'ArrowRight' && cur + 1 < D.tokens.length) show(cur + 1);
    if(ev.key === 'ArrowLeft' && cur > 0) show(cur - 1);
  });
  function fromHash(){
    const m = /click=(\d+)/.exec(location.hash);
    if(m){ const t = document.querySelector('.tok[data-i="' + m[1] + '"]'); if(t) t.click(); }
  }
  window.addEventListener('hashchange', fromHash);
  fromHash();
})();
"""


_SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                   "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _h(text: str) -> str:
    """HTML text: escaped, and control characters visible (the page may go to stdout)."""
    return html.escape(visible(text))


def _script_json(obj: Any) -> str:
    """JSON safe inside <script>: with no '<' at all, nothing ('</script>', '<!--',
    '<script>') can end the element or switch the HTML parser's script-data state, and
    the \\u escapes are still valid JSON (these characters only occur inside strings)."""
    text = _ESCAPE_RAW.sub(lambda m: f"\\u{ord(m.group()):04x}", dumps_finite(obj, "HTML export"))
    return re.sub("[<>&\u2028\u2029]", lambda m: _SCRIPT_ESCAPES[m.group()], text)


def to_html(session: Session) -> str:
    """One self-contained HTML page: token heat map by fidelity + click-for-details."""
    expl, caveats = _by_index(session), _caveats(session)
    greys = _norm_colours(session)
    noted, note_ends = inline_notes(session.notes)
    by_turn: dict[int, list[str]] = {}
    for t in session.tokens:
        best = best_explanation(expl.get(t.index, []))
        if best is not None and best.score is not None:
            colour, tip = fidelity_colour(best.score.fidelity), f"fidelity {best.score.fidelity:.3f}"
        else:
            colour = greys[t.index] if t.index < len(greys) else "#eee"
            tip = "explained (unscored)" if best else "not explained"
        cls = ("tok special" if t.role in ("bos", "special") else "tok") + (" noted" if t.index in noted else "")
        by_turn.setdefault(t.turn, []).append(
            f'<span class="{cls}" data-i="{t.index}" data-role="{html.escape(t.role)}" style="background:{colour}" '
            f'title="{html.escape(tip)}">{_h(t.text)}</span>' + note_marker(note_ends.get(t.index, [])))
    blocks = []
    for turn in sorted(by_turn):
        role = (session.messages[turn].role if 0 <= turn < len(session.messages)
                else "prefix")
        blocks.append(f'<div class="msg"><div class="role">{_h(role)}</div>'
                      f'<div class="toks">{"".join(by_turn[turn])}</div></div>')
    data = {
        "tokens": [dict(t.to_json(), warnings=[c.text for c in caveats[t.index]]) for t in session.tokens],
        "explanations": {str(i): [dict(e.to_json(), verdict=verdict(e.score, caveats[i]) if e.score else "")
                                  for e in sorted(es, key=lambda e: -(e.score.fidelity if e.score else -9))]
                         for i, es in expl.items()},
        "notes": [n.to_json() for n in session.notes],
    }
    warn = (f'<div class="warn">{html.escape(UNTRAINED_NOTE)}</div>' if session.info.untrained_av
            else f'<div class="meta pair">About the pair: {html.escape(session.info.pair_note)}.</div>'
            if session.info.pair_note else "")
    legend = ('<div class="legend meta">colour = round-trip fidelity (fve_nrm, else cos): '
              f'<span style="background:{fidelity_colour(0)}">≤0</span>'
              f'<span style="background:{fidelity_colour(0.5)}">0.5</span>'
              f'<span style="background:{fidelity_colour(1)}">1</span> · grey = not explained '
              '(darker = larger activation norm) · click a token for its explanation</div>')
    title = _h(session.name)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · nla-tui</title><style>{_CSS}{NOTES_CSS}{BRANCHES_CSS}{PAIR_CSS if session.extra_pair else ""}</style></head>
<body><header><h1>{title}</h1>
<div class="meta">{_h(_models_line(session))} · {len(session.tokens)} tokens, {session.n_explained} explained · updated {_h(session.updated)}</div>
{warn}{legend}</header>
<div id="wrap"><section id="conv">{"".join(blocks)}</section>
<aside id="detail"><p class="none">Click a token to see its explanation.</p></aside></div>
{pair_html(session)}{steered_html(session.steered)}
{notes_html(session.notes)}
{branches_html(session.branch_tree()) if session.branches else ""}
<script id="nla-data" type="application/json">{_script_json(data)}</script>
<script>{_JS}</script>
</body></html>
"""


# ------------------------------------------------------------------ files and CLI

_RENDER = {"md": to_markdown, "json": to_json, "html": to_html}


def export_session(session: Session, fmt: str, out: str | os.PathLike | None = None) -> Path | str:
    """Render `session` as fmt ('md'|'json'|'html'). With `out`, write it atomically
    (temp + rename) and return the path; without, return the text."""
    if fmt not in _RENDER:
        raise InputError(f"Unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    text = _RENDER[fmt](session)
    if out is None:
        return text
    out = check_export_target(out)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as e:
        with contextlib.suppress(OSError):  # on a read-only disk even this unlink fails (EROFS)
            tmp.unlink(missing_ok=True)
        raise InputError(f"Could not write {out}: {e.strerror or e}. Choose another --out "
                         "path or free disk space.") from e
    return out
