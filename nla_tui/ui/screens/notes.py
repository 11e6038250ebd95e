"""Notes on tokens: the dialog that writes one (n) and the panel that lists them (N).
Views over core/notes.py data; the Notes controller (ui/note_actions.py) keeps them."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList, TextArea
from textual.widgets.option_list import Option

from ...core.errors import InputError
from ...core.notes import Note, check_note
from ...terminal_text import visible
from ..literal import literal


class NoteDialog(ModalScreen[tuple[int, str] | None]):
    """Write a note on token `start` (through a later token, for a span). ctrl+s keeps it,
    Esc cancels. Dismisses with (end, text)."""

    AUTO_FOCUS = "#note-area"
    BINDINGS = [Binding("ctrl+s", "keep", "keep"), Binding("escape", "dismiss_none", "cancel")]

    def __init__(self, start: int, token: str, n_tokens: int, text: str = "", end: int | None = None) -> None:
        super().__init__()
        self.start, self.token, self.n_tokens = start, token, n_tokens
        self.text, self.end = text, start if end is None else end

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog -note"):
            yield Label(literal(f"Note on token {self.start} {visible(repr(self.token))}: what do you notice? "
                                "ctrl+s keeps it (saved with the session, in every export; / finds it). "
                                "Esc cancels."), classes="dialog-title")
            yield TextArea(self.text, id="note-area")
            with Horizontal(id="note-options"):
                yield Label("through token", classes="note-label")
                yield Input(value=str(self.end), id="note-end")
            yield Label("", id="dialog-error", classes="dialog-error")

    def action_keep(self) -> None:
        text = self.query_one(TextArea).text
        raw_end = self.query_one("#note-end", Input).value.strip()
        try:
            end = int(raw_end)
        except ValueError:
            self.query_one("#dialog-error", Label).update(literal(
                f"'through token' must be a token number (≥ {self.start}); got {raw_end!r}."))
            return
        try:
            check_note(self.start, end, text, self.n_tokens)
        except InputError as e:
            self.query_one("#dialog-error", Label).update(literal(str(e)))
            return
        self.dismiss((end, text))

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


def note_line(note: Note, tokens_text: str) -> Text:
    first = note.text.strip().splitlines()[0] if note.text.strip() else ""
    t = Text(f"{note.span_label():<16} ", style="bold green")
    t.append(visible(repr(tokens_text))[:24].ljust(25), style="dim")
    t.append(visible(first))
    return t


class NotesScreen(ModalScreen[Note | None]):
    """Every note on the conversation, in token order: Enter jumps to its first token,
    d deletes the highlighted one (after the panel closes, the app saves), Esc closes."""

    AUTO_FOCUS = "#notes-list"
    BINDINGS = [Binding("escape,N", "dismiss_none", "close"), Binding("d", "delete", "delete")]

    def __init__(self, notes: list[Note], token_text: list[str]) -> None:
        super().__init__()
        self.notes = sorted(notes, key=lambda n: (n.start, n.end))
        self.token_text = token_text
        self.deleted: list[Note] = []

    def _span_text(self, note: Note) -> str:
        return "".join(self.token_text[note.start:note.end + 1])

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog -notes"):
            yield Label(f"Notes ({len(self.notes)}) · Enter jumps to the tokens · d deletes · Esc closes",
                        classes="dialog-title", id="notes-title")
            yield OptionList(*[Option(note_line(n, self._span_text(n))) for n in self.notes], id="notes-list")

    @on(OptionList.OptionSelected)
    def _jump(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(self.notes[event.option_index])

    def action_delete(self) -> None:
        listing = self.query_one(OptionList)
        k = listing.highlighted
        if k is None or not self.notes:
            return
        self.deleted.append(self.notes.pop(k))
        listing.remove_option_at_index(k)
        self.query_one("#notes-title", Label).update(
            f"Notes ({len(self.notes)}) · Enter jumps to the tokens · d deletes · Esc closes")

    def action_dismiss_none(self) -> None:
        self.dismiss(None)
