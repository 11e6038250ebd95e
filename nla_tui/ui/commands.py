"""The command palette's entries for the app's own actions (ctrl+p): every key of the keymap
(ui/keys.py) with a palette title, run through the same action string the key runs."""

from __future__ import annotations

from typing import Any, Iterable

from textual.app import App, SystemCommand

from .keys import palette_entries


def palette_commands(app: App[Any]) -> Iterable[SystemCommand]:
    for title, help_line, action in palette_entries():
        yield SystemCommand(title, help_line, lambda action=action: app.run_action(action))
