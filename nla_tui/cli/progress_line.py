"""A one-line progress display for long headless jobs (rows/s and ETA) on stderr.

Small on purpose, so a shared progress display can replace it: on a terminal the line
is redrawn in place; otherwise (a log file, CI) one line is printed at most every
`every` seconds, and always at the end.
"""

from __future__ import annotations

import sys
import time

from ..terminal_text import visible


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class ProgressLine:
    def __init__(self, label: str, stream=None, every: float = 5.0):
        self.label, self.stream, self.every = label, stream or sys.stderr, every
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.last = 0.0

    def update(self, done: int, total: int, rate: float, eta: float | None, extra: str = "",
               final: bool = False) -> None:
        now = time.monotonic()
        if not (final or self.tty or now - self.last >= self.every):
            return
        self.last = now
        pct = 100.0 * done / total if total else 100.0
        text = (f"[{self.label}] {done:,}/{total:,} ({pct:.0f}%) · {rate:.2f}/s · "
                f"ETA {duration(eta) if not final else '0s'}" + (f" · {extra}" if extra else ""))
        text = visible(text)  # labels and extras may come from files: shown, never obeyed
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
