"""The chat pane: the conversation so far, the reply streaming in, an input box."""

from __future__ import annotations

from rich.text import Text
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Input, Static

from ...core.store.transcript import message_display_text
from ...core.types import Message
from ...terminal_text import visible

_ROLE_NAMES = {"user": "you", "assistant": "model", "system": "system", "tool": "tool"}


class ChatMessage(Static):
    def __init__(self, role: str, content: str, streaming: bool = False) -> None:
        super().__init__(classes=f"msg -{role}")
        self.role = role
        self.message_text = content
        self.streaming = streaming
        self._paint()

    def _paint(self) -> None:
        t = Text()
        t.append(f"{visible(_ROLE_NAMES.get(self.role, self.role))}: ", style="bold")
        t.append(visible(self.message_text))  # a transcript's ANSI codes must not reach the terminal
        if self.streaming:
            t.append("▌", style="blink")
        self.update(t)

    def append(self, text: str) -> None:
        self.message_text += text
        self._paint()

    def finish(self) -> None:
        self.streaming = False
        self._paint()


class ChatPane(Vertical):
    def compose(self):
        note = Static("", id="chat-note")
        note.display = False
        yield note
        yield VerticalScroll(id="chat-log")
        # select_on_focus off: a key typed on the empty strip lands here (see TokenStrip),
        # and focusing must not select it for the next key to overwrite.
        yield Input(placeholder="message the subject model · Enter sends", id="chat-input",
                    select_on_focus=False)

    @property
    def log(self) -> VerticalScroll:
        return self.query_one("#chat-log", VerticalScroll)

    @property
    def input(self) -> Input:
        return self.query_one("#chat-input", Input)

    def show_note(self, text: str | None) -> None:
        """One line above the conversation (e.g. that the demo's example is teacher-forced)."""
        note = self.query_one("#chat-note", Static)
        note.update(text or "")
        note.display = bool(text)

    @property
    def note(self) -> str:
        note = self.query_one("#chat-note", Static)
        return str(note.render()) if note.display else ""

    def set_messages(self, messages: list[Message]) -> None:
        log = self.log
        log.remove_children()
        log.mount_all([ChatMessage(m.role, message_display_text(m)) for m in messages])
        log.scroll_end(animate=False)

    def start_reply(self, user_text: str | None) -> None:
        new = [ChatMessage("user", user_text)] if user_text is not None else []
        new.append(ChatMessage("assistant", "", streaming=True))
        self.log.mount_all(new)
        self.log.scroll_end(animate=False)

    def append_reply(self, text: str) -> None:
        msgs = self.log.query(ChatMessage)
        if msgs and msgs.last().streaming:
            msgs.last().append(text)
            self.log.scroll_end(animate=False)

    @property
    def reply_text(self) -> str:
        msgs = self.log.query(ChatMessage)
        return msgs.last().message_text if msgs else ""
