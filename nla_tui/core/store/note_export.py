"""Notes in exports: a Markdown section, and in HTML a marker after each note's last
token (the noted tokens underlined) plus a list; JSON carries them as the session's
`notes`. Note text is data: Markdown escapes it (md_inline), HTML escapes it and shows
control characters visibly, so a note can never add markup or reach a terminal raw."""

from __future__ import annotations

import html

from ...terminal_text import visible
from ..notes import Note
from .markdown_text import md_inline


def _h(text: str) -> str:
    return html.escape(visible(text))


def _where(n: Note) -> str:
    return n.span_label() + (f" (branch {n.branch})" if n.branch is not None else "")


def notes_markdown(notes: list[Note], token_text: dict[int, str]) -> list[str]:
    """A `## Notes` section, one item per note in token order, with the noted text."""
    if not notes:
        return []
    lines = ["## Notes", ""]
    for n in sorted(notes, key=lambda n: (n.branch is not None, n.start, n.end)):
        quoted = ("".join(token_text.get(i, "") for i in range(n.start, n.end + 1))
                  if n.branch is None else "")
        on = f" {md_inline(repr(quoted))}" if quoted else ""
        lines.append(f"- **{md_inline(_where(n))}**{on}: {md_inline(n.text)} ({md_inline(n.created)})")
    return lines + [""]


def inline_notes(notes: list[Note]) -> tuple[set[int], dict[int, list[Note]]]:
    """For the HTML token flow: the token indices a note covers (underlined) and the notes
    ending at each index (their marker follows that token). Notes of other branches stay
    out of the flow: their indices are that branch's tokens, not these."""
    noted: set[int] = set()
    ending: dict[int, list[Note]] = {}
    for n in notes:
        if n.branch is None:
            noted.update(range(n.start, n.end + 1))
            ending.setdefault(n.end, []).append(n)
    return noted, ending


def note_marker(notes: list[Note]) -> str:
    """The inline marker placed after a note's last token: its text, escaped."""
    return "".join(f'<span class="note" data-start="{n.start}" data-end="{n.end}" title="{_h(_where(n))}">'
                   f"✎ {_h(n.text)}</span>" for n in notes)


def notes_html(notes: list[Note]) -> str:
    if not notes:
        return ""
    items = "".join(f'<li><a href="#click={n.start}">{_h(_where(n))}</a>: <span class="notetext">{_h(n.text)}'
                    f'</span> <span class="meta">{_h(n.created)}</span></li>'
                    for n in sorted(notes, key=lambda n: (n.branch is not None, n.start, n.end)))
    return f'<section id="notes"><h2>Notes</h2><ul>{items}</ul></section>'


NOTES_CSS = (".tok.noted{text-decoration:underline dotted #7b1fa2 2px}"
             ".note{background:#f3e5f5;color:#4a148c;border:1px solid #ce93d8;border-radius:4px;padding:0 4px;"
             "margin:0 3px;font-family:system-ui,sans-serif;font-size:12px;white-space:pre-wrap}"
             "#notes,#steered{padding:0 20px}")
