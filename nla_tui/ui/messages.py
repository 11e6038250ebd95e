"""The Textual messages that carry core events from the worker thread into the UI.

The worker's callback posts `engine_message(event)` with app.post_message (thread-safe).
Events that only say "the latest value is X" are coalesced by Textual itself: when a
newer message of the same stream is already waiting in the app's queue, the older one
is dropped (`Message.can_replace`), so a fast decode loop costs the UI one redraw per
frame it can draw, not one per token, and no hand-written throttle sits in between.
Everything else (finished explanations, job ends, chat text, which is appended) is an
`EngineEvent` and is never dropped. Unpacking the event is UiState.apply's job alone.
"""

from __future__ import annotations

from textual.message import Message

from ..core import events as ev
from ..core.pair_jobs import PairExplainDelta
from ..core.steer_jobs import SteerProgress


class EngineEvent(Message):
    """A core event from the worker thread; every one is folded into UiState in order."""

    def __init__(self, event: ev.Event) -> None:
        super().__init__()
        self.event = event


class ExplainTextArrived(EngineEvent):
    """The explanation text so far for one token (ExplainDelta): a newer one for the
    same token replaces it."""

    event: ev.ExplainDelta

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ExplainTextArrived) and message.event.index == self.event.index


class PairTextArrived(EngineEvent):
    """The extra pair's explanation text so far for one token (PairExplainDelta): a newer
    one for the same pair and token replaces it."""

    event: PairExplainDelta

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, PairTextArrived) and \
            (message.event.pair, message.event.index) == (self.event.pair, self.event.index)


class ProgressArrived(EngineEvent):
    """How far a job has got (load, capture, explain-all, steer / compare): only the
    newest count of the same job matters."""

    def can_replace(self, message: Message) -> bool:
        if not isinstance(message, ProgressArrived) or type(message.event) is not type(self.event):
            return False
        if isinstance(self.event, ev.LoadProgress):  # one bar per model
            return isinstance(message.event, ev.LoadProgress) and message.event.model == self.event.model
        return True


_PROGRESS = (ev.LoadProgress, ev.CaptureProgress, ev.ExplainAllProgress, SteerProgress, ev.QueueDepth)


def engine_message(event: ev.Event) -> EngineEvent:
    """The message that carries `event`: a replaceable one for streams of latest values."""
    if isinstance(event, ev.ExplainDelta):
        return ExplainTextArrived(event)
    if isinstance(event, PairExplainDelta):
        return PairTextArrived(event)
    if isinstance(event, _PROGRESS):
        return ProgressArrived(event)
    return EngineEvent(event)


__all__ = ["EngineEvent", "ExplainTextArrived", "PairTextArrived", "ProgressArrived", "engine_message"]
