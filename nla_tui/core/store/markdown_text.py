"""Text from a session placed into Markdown: shown as written, never obeyed.

A Markdown viewer would run or hide `<script>`, follow `[x](javascript:…)`, load
`![](https://remote/pixel.png)` (a tracking pixel) and resolve `&amp;`; a terminal the
export is printed to would obey an ESC. So every piece of session text in the Markdown
export (conversation, token table, steered continuations) goes through `md_inline` or
`md_quote`: each Markdown/HTML special character is backslash-escaped (CommonMark shows
an escaped punctuation character literally, so no tag, link, image or entity can form)
and control characters are made visible.
"""

from __future__ import annotations

from ...terminal_text import visible

_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]<>|#!&~"})
# A message keeps its emphasis, code and lists (model replies are Markdown); only what
# makes a tag, link, image or entity is escaped.
_QUOTE_SPECIAL = str.maketrans({c: "\\" + c for c in "\\[]<>!&"})


def md_inline(text: str) -> str:
    """One table cell or list item: escaped, on one line (newlines shown as ↵)."""
    return visible(text.translate(_MD_SPECIAL).replace("\r", "").replace("\n", " ↵ "))


def md_quote(text: str) -> str:
    """A block quote of several lines: Markdown emphasis kept, no tag, link, image or entity."""
    lines = visible(text.translate(_QUOTE_SPECIAL)).splitlines() or [""]
    return "\n".join("> " + ln if ln else ">" for ln in lines)
