"""Terminal overrides for SSH sessions.

COLORTERM is often not forwarded over SSH, so Rich falls back to 256 or 16
colours even on a truecolor terminal. Textual reads TEXTUAL_COLOR_SYSTEM once,
into textual.constants.COLOR_SYSTEM, at import; App.__init__ then passes that
constant to its Console. So the override sets both, before the App is built.
"""

from __future__ import annotations

import os

from ..core.errors import InputError

COLOR_SYSTEMS = ("auto", "truecolor", "256", "standard", "none")


def apply_color_system(value: str | None) -> None:
    if not value:
        return
    if value not in COLOR_SYSTEMS:
        raise InputError(f"--color-system {value!r} is not one of {', '.join(COLOR_SYSTEMS)}; "
                         "use truecolor if your terminal shows 24-bit colour, 256 otherwise.")
    import textual.constants

    # Rich's Console takes None for "no colour"; "none" is the spelling a shell can pass.
    textual.constants.COLOR_SYSTEM = None if value == "none" else value  # type: ignore[misc]
    os.environ["TEXTUAL_COLOR_SYSTEM"] = value
