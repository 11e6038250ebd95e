"""The CLI's one way to print: every line goes through `terminal_text.visible`.

Tables, replies, explanations, session names, file names and errors all come from
models and files, and a raw ESC among them would be obeyed by the terminal (retitle,
clear, OSC 52 clipboard writes). Formatting a whole line and then printing it through
`say` means a field added to a line later cannot forget the escaping;
tests/ui/test_reliability_escapes.py fails if a CLI module prints any other way.
"""

from __future__ import annotations

import sys
from typing import TextIO

from ..terminal_text import visible


def say(*parts: object, sep: str = " ", end: str = "\n", file: TextIO | None = None, flush: bool = False,
        keep_layout: bool = True) -> None:
    """print(), with every control character made visible (newlines and tabs kept
    unless keep_layout is False)."""
    text = sep.join(str(p) for p in parts)
    print(visible(text, keep_layout), end=end, file=file or sys.stdout, flush=flush)


def warn(message: str) -> None:
    """A one-line warning on standard error (the run goes on)."""
    say(f"nla-tui: warning: {message}", file=sys.stderr, flush=True)
