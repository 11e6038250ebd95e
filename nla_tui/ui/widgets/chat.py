"""The chat pane: the transcript (one Line-API widget, transcript_view.py), the reply
streaming into its last message, and an input box."""

from __future__ import annotations

from textual.containers import Vertical
from textual.widgets import Input, Static

from ...core.store.transcript import message_display_text
from ...core.types import Message
from ..literal import literal
from .transcript_view import Entry, TranscriptView


class ChatPane(Vertical):
    def compose(self):
        note = Static("", id="chat-note")
        note.display = False
        yield note
        yield TranscriptView(id="chat-log")
        # select_on_focus off: a key typed on the empty strip lands here (see TokenStrip),
        # and focusing must not select it for the next key to overwrite.
        yield Input(placeholder="message the subject model · Enter sends", id="chat-input",
                    select_on_focus=False)

    @property
    def log(self) -> TranscriptView:
        return self.query_one("#chat-log", TranscriptView)

    @property
    def input(self) -> Input:
        return self.query_one("#chat-input", Input)

    def show_note(self, text: str | None) -> None:
        """One line above the conversation (e.g. that the demo's example is teacher-forced)."""
        note = self.query_one("#chat-note", Static)
        note.update(literal(text or ""))
        note.display = bool(text)

    @property
    def note(self) -> str:
        note = self.query_one("#chat-note", Static)
        return str(note.render()) if note.display else ""

    def set_messages(self, messages: list[Message]) -> None:
        self.log.set_entries([Entry(m.role, message_display_text(m)) for m in messages])

    def start_reply(self, user_text: str | None) -> None:
        if user_text is not None:
            self.log.append(Entry("user", user_text))
        self.log.append(Entry("assistant", "", streaming=True))

    def append_reply(self, text: str) -> None:
        entries = self.log.entries
        if entries and entries[-1].streaming:
            self.log.update_last(entries[-1].text + text)

    @property
    def reply_text(self) -> str:
        entries = self.log.entries
        return entries[-1].text if entries else ""
