"""? / F1: every key, drawn from the one keymap (ui/keys.py) the app and the strip bind."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from ..keys import help_rows


def keys_table() -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    for section, rows in help_rows():
        table.add_row(f"[bold underline]{section}[/]", "")
        for key, action in rows:
            table.add_row(key, action)
        table.add_row("", "")
    return table


class HelpScreen(ModalScreen[None]):
    AUTO_FOCUS = "#help-box"  # so arrows / PgDn scroll the list
    BINDINGS = [
        Binding("escape,q,question_mark,f1", "dismiss", "close"),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Static("[bold]nla-tui keys[/]  (Esc closes)", id="help-title")
            yield Static(keys_table(), id="help-keys")
