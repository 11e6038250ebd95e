"""What the UI shows of a string from a model, a file or the user: exactly what it is.

Two things could go wrong between such a string and the terminal, and each has one
structural guard here:

- Markup. Textual reads a plain `str` given to a Label, Static, DataTable cell,
  Option or notification as content markup: `notes [/tmp/x]` raises MarkupError and
  `layer [red] test` turns red and loses its tag. A rich `Text` is never parsed, so
  data goes to widgets as `literal(...)`.
- Control characters. A raw ESC would be obeyed by the terminal (retitle, clear the
  screen, OSC 52 clipboard writes). `ShowControls` is a Textual line filter that the
  app applies to every line of every widget (toasts, dialogs and the command palette
  included) on its way to the terminal, so a field added later cannot forget:
  `visible` maps each control character to one visible cell (␛, ␇, …), so the layout
  does not move.

tests/ui/test_reliability_escapes.py fills every string field of a session with escapes
and markup and counts the raw bytes the TUI writes to a real pty.
"""

from __future__ import annotations

from rich.segment import Segment
from rich.text import Text
from textual.color import Color
from textual.filter import LineFilter

from ..terminal_text import has_control, visible


def literal(text: object, style: str = "", keep_layout: bool = True) -> Text:
    """`text` as a Text shown character for character (control characters made visible)."""
    return Text(visible(str(text), keep_layout), style=style)


class ShowControls(LineFilter):
    """Every control character in a rendered line shown as its visible stand-in."""

    def apply(self, segments: list[Segment], background: Color) -> list[Segment]:
        if not any(not seg.control and has_control(seg.text) for seg in segments):
            return segments  # the common case: nothing to change, no copy
        return [seg if seg.control else Segment(visible(seg.text, keep_layout=False), seg.style)
                for seg in segments]
