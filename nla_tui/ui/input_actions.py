"""The app's dialogs for AV settings and for opening conversations (a mixin of NlaApp,
kept apart so app.py stays one screen of wiring)."""

from __future__ import annotations

from pathlib import Path

from ..core import events as ev
from ..core.errors import NlaError
from ..core.store.transcript import control_marker_warning, load_transcript
from ..core.types import Message
from .screens.dialogs import PromptDialog, ValueDialog, check_temperature

EXAMPLE_PROMPT = "What does <concept><INJECT></concept> mean? Answer in <explanation></explanation> tags."
# Shown above the demo's example conversation (options.example): its model turns were
# written for the model and teacher-forced, since Gemma 3 270M is a base model.
EXAMPLE_NOTE = "teacher-forced example: base 270M is not a chat model · i to chat"


class InputActions:
    """t (temperature), p (AV prompt), o (open a transcript) and the demo's example."""

    def action_temperature(self) -> None:
        def done(value: str | None) -> None:
            if value is not None:
                self.temperature = float(value)
                self._update_status()
        self.push_screen(ValueDialog("AV temperature (0 = greedy, up to 2)", f"{self.temperature:g}",
                                     validate=check_temperature), done)

    def action_prompt(self) -> None:
        def done(value: str | None) -> None:
            if value is None:
                return
            self.av_prompt = value or None
            self.notify("AV prompt: " + ("custom" if value else "checkpoint default"), timeout=3)
        self.push_screen(PromptDialog(self.av_prompt or EXAMPLE_PROMPT), done)

    def action_open_transcript(self) -> None:
        def done(value: str | None) -> None:
            if value:
                self.open_transcript(value)
        self.push_screen(ValueDialog("Open transcript (JSON list of {role, content})",
                                     placeholder="path/to/chat.json"), done)

    def warn_control_markers(self, messages: list[Message | str]) -> None:
        """Chat-template markers typed as text become real control tokens: say so."""
        marker = control_marker_warning([m if isinstance(m, Message) else Message("user", m) for m in messages])
        if marker:
            self.notify(marker.replace("message 0 (user)", "your message"), severity="warning", timeout=8)

    def open_transcript(self, path: str | Path) -> None:
        try:
            messages = load_transcript(path)
        except NlaError as e:
            self.notify(str(e), title="Cannot open transcript", severity="error", timeout=10)
            return
        self.warn_control_markers(messages)
        self.chat.show_note(None)
        self.strip.follow = False
        self.submit(ev.SetConversation(messages))

    def _open_example(self, ready: ev.ModelsReady) -> None:
        """On the demo preset with nothing else to show, open the shipped example
        conversation (teacher-forced) and say so above it; chat stays available."""
        if not self._example_pending or ready.info.preset != "demo" or self.state.tokens:
            return
        self._example_pending = False
        try:
            messages = load_transcript(self.options.example)
        except NlaError as e:  # a broken install: the app still works without it
            self.notify(str(e), title="Cannot open the example", severity="warning", timeout=8)
            return
        self.strip.follow = False
        self.submit(ev.SetConversation(messages))
        self.chat.show_note(EXAMPLE_NOTE)
        self._example_capturing = True
