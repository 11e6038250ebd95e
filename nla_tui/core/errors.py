"""User-facing errors: one paragraph that says what is wrong and how to fix it.

The CLI prints `NlaError` without a traceback and exits 2; the TUI shows it in a
notification and keeps running. Anything else is a bug and gets a traceback.
"""

from __future__ import annotations

import reprlib
from typing import Any


class NlaError(Exception):
    """A problem the user can fix (bad input, missing weights, drifted checkpoint)."""


class CheckpointError(NlaError):
    """An NLA checkpoint (sidecar, tokenizer, value head) is inconsistent."""


class InputError(NlaError):
    """Bad user input: empty prompt, malformed messages file, bad vector."""


class Cancelled(Exception):
    """A job was cancelled by the user (Esc). Not an error."""


class SessionConflict(InputError):
    """The session on disk changed since it was loaded (another process saved it):
    saving would silently lose that change."""


class _Brief(reprlib.Repr):
    """repr cut short, never huge: a 5000-digit number (whose repr raises in Python
    3.11+) or an alias-bombed YAML value becomes a few dozen characters."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxdict, self.maxlist, self.maxstring, self.maxother = 2, 4, 4, 60, 60

    def repr_int(self, x: int, level: int) -> str:
        return repr(x) if abs(x) < 10 ** 30 else f"<a {x.bit_length()}-bit number>"


_BRIEF = _Brief()


def brief(value: Any) -> str:
    """A value echoed in an error message, at most about 80 characters."""
    return _BRIEF.repr(value)[:120]
