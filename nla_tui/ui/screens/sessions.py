"""ctrl+o / F2: the saved sessions, newest first. Enter opens, r renames, d deletes.

Reads session.json files only (core.session.list_sessions), so the list is instant
even for sessions with large activations. An unreadable session stays listed with
its error (and can be deleted) instead of breaking the screen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Label, Static

from ...core.errors import NlaError
from ...core.store.session import SessionSummary, delete_session, list_sessions, rename_session
from ...terminal_text import visible
from ..literal import literal
from .dialogs import ValueDialog

HINT = "Enter open · r rename · d delete · Esc close"


def shown_path(path: Path) -> str:
    """A folder as the user knows it: `~/…` under the home directory."""
    try:
        return "~/" + str(path.relative_to(Path.home()))
    except ValueError:
        return str(path)


def when(iso: str) -> str:
    """'2026-11-25T10:30:00+00:00' -> '2026-11-25 10:30 UTC' (as stored: stable, unambiguous)."""
    return f"{iso[:10]} {iso[11:16]} UTC" if len(iso) >= 16 else iso


class ConfirmDialog(ModalScreen[bool]):
    """Yes / no. y or Enter on Delete confirms; n or Esc cancels."""

    DEFAULT_CSS = """
    ConfirmDialog { align: center middle; }
    ConfirmDialog .dialog { width: 64; max-width: 95%; height: auto; border: thick $error;
                            background: $surface; padding: 0 1; }
    ConfirmDialog Horizontal { height: auto; margin-top: 1; }
    ConfirmDialog Button { margin-right: 2; }
    """
    AUTO_FOCUS = "#confirm-no"  # a stray Enter must not delete anything
    BINDINGS = [Binding("y", "answer(True)", "yes"), Binding("n,escape", "answer(False)", "no")]

    def __init__(self, question: str, yes: str = "Delete") -> None:
        super().__init__()
        self.question, self.yes = question, yes

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(literal(self.question), id="confirm-question")
            with Horizontal():
                yield Button(f"{self.yes} (y)", variant="error", id="confirm-yes")
                yield Button("Cancel (n)", id="confirm-no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "confirm-yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class SessionBrowser(ModalScreen[Path | None]):
    """Dismisses with the directory to open, or None."""

    DEFAULT_CSS = """
    SessionBrowser { align: center middle; }
    #sessions-box { width: 110; max-width: 98%; height: 85%; border: thick $accent;
                    background: $surface; padding: 0 1; }
    #sessions-title { margin-bottom: 1; }
    #sessions-table { height: 1fr; }
    #sessions-empty { color: $text-muted; }
    #sessions-hint { color: $text-muted; }
    """
    AUTO_FOCUS = "#sessions-table"
    BINDINGS = [
        Binding("escape,q", "close", "close"),
        Binding("r", "rename", "rename"),
        Binding("d,delete", "delete", "delete"),
    ]

    def __init__(self, root: Path, current: Path | None = None,
                 rename_open: Callable[[str], Path] | None = None,
                 delete_open: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.root = root
        self.current = current  # the session the app shows (marked, and kept in sync on rename)
        # The open session is renamed / deleted through the app's saver, between two
        # autosaves; any other session directly.
        self.rename_open = rename_open or (lambda name: rename_session(current, name))
        self.delete_open = delete_open or (lambda: delete_session(current))
        self.rows: list[SessionSummary] = []

    def compose(self) -> ComposeResult:
        with Vertical(id="sessions-box"):
            yield Static(Text.assemble(("Saved sessions", "bold"), "  in ", literal(shown_path(self.root))),
                         id="sessions-title")
            yield DataTable(id="sessions-table", cursor_type="row", zebra_stripes=True)
            yield Static("", id="sessions-empty")
            yield Static(HINT, id="sessions-hint")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("name", "updated", "preset", "tokens", "explained", "note")
        self.reload()

    @property
    def table(self) -> DataTable:
        return self.query_one(DataTable)

    def reload(self, select: Path | None = None) -> None:
        self.rows = list_sessions(self.root)
        table = self.table
        table.clear()
        for s in self.rows:
            error = s.error.replace(str(self.root), shown_path(self.root)) if s.error else None
            note = f"unreadable: {error}" if error else (
                "open now" if self.current is not None and s.path == self.current else "")
            table.add_row(literal(s.name), literal(when(s.updated)), literal(s.preset or ""), str(s.n_tokens),
                          str(s.n_explained), literal(note[:200]))
        self.query_one("#sessions-empty", Static).update(
            "" if self.rows else "No saved sessions yet: ctrl+s saves the current one "
            "(it is also saved automatically after every job).")
        if select is not None:
            for i, s in enumerate(self.rows):
                if s.path == select:
                    table.move_cursor(row=i)

    def selected(self) -> SessionSummary | None:
        if not self.rows:
            return None
        row = self.table.cursor_row
        return self.rows[row] if 0 <= row < len(self.rows) else None

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        s = self.selected()
        if s is None:
            return
        if s.error:
            self.notify(f"Cannot open {s.path}: {s.error}", severity="error", timeout=10)
            return
        self.dismiss(s.path)

    def action_close(self) -> None:
        self.dismiss(None)

    def action_rename(self) -> None:
        s = self.selected()
        if s is None:
            return

        def done(name: str | None) -> None:
            if not name:
                return
            is_open = self.current is not None and s.path == self.current
            try:
                new = self.rename_open(name) if is_open else rename_session(s.path, name)
            except (NlaError, OSError) as e:
                self.notify(str(e), title="Rename failed", severity="error", timeout=10)
                return
            if is_open:
                self.current = new
            self.reload(select=new)

        self.app.push_screen(ValueDialog("Rename session", visible(s.name, keep_layout=False),
                                         validate=lambda v: None if v.strip() else
                                         "A session name cannot be empty."), done)

    def action_delete(self) -> None:
        s = self.selected()
        if s is None:
            return

        def done(yes: bool | None) -> None:
            if not yes:
                return
            is_open = self.current is not None and s.path == self.current
            try:
                self.delete_open() if is_open else delete_session(s.path)
            except (NlaError, OSError) as e:
                self.notify(str(e), title="Delete failed", severity="error", timeout=10)
                return
            if is_open:
                self.current = None  # the next save of the shown conversation makes a new one
            self.notify(f"Deleted {s.name}", timeout=3)
            self.reload()

        self.app.push_screen(ConfirmDialog(f"Delete session {s.name!r} ({s.n_tokens} tokens, "
                                           f"{s.n_explained} explained)? This cannot be undone."),
                             done)
