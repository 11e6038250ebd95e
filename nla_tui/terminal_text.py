"""Text on its way to a terminal: control characters made visible, never sent raw.

Tokens, explanations, transcript messages and session names are data from models and
files. A raw ESC there (`\\x1b]0;T\\x07` retitles the window, `\\x1b[2J` clears the
screen, OSC 52 writes the clipboard) would be obeyed by the terminal. Every place that
prints such text (CLI tables and errors, the Markdown export, the TUI's chat pane,
token strip and explanation pane) passes it through `visible`, which shows each
control character as one visible cell: ␛ for ESC, ␇ for BEL (the Unicode "control
pictures"), ␡ for DEL, and � for C1 controls and bidirectional overrides (which can
make text read differently from what it is).

Plain Python (no Textual, no torch): the core, the CLI and the UI all import it.
"""

from __future__ import annotations

_MAP: dict[int, str] = {c: chr(0x2400 + c) for c in range(0x20)}  # ␀ … ␟
_MAP[0x7F] = "␡"
_MAP.update({c: "\ufffd" for c in range(0x80, 0xA0)})  # C1: CSI (0x9b), OSC (0x9d), ...
_MAP.update({c: "\ufffd" for c in (0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))})
_LAYOUT = dict(_MAP)
del _LAYOUT[0x0A], _LAYOUT[0x09]  # newline and tab keep their meaning in multi-line panes


def visible(text: str, keep_layout: bool = True) -> str:
    """`text` with every control character replaced by a visible stand-in. With
    keep_layout (the default) newlines and tabs stay; without, they are ␊ and ␉."""
    return text.translate(_LAYOUT if keep_layout else _MAP)


def has_control(text: str) -> bool:
    """True when `visible` would change `text` (newline and tab allowed)."""
    return text.translate(_LAYOUT) != text
