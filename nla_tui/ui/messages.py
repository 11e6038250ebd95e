"""The one Textual message that carries every core event into the UI."""

from __future__ import annotations

from textual.message import Message

from ..core.events import Event


class EngineEvent(Message):
    """A core event from the worker thread, posted with app.post_message (thread-safe)."""

    def __init__(self, event: Event) -> None:
        super().__init__()
        self.event = event
