"""The app's dialogs for AV settings and for opening conversations: t (temperature), p (AV
prompt), o (open a transcript) and the demo's example conversation. A controller of
NlaApp (ui/host.py)."""

from __future__ import annotations

from pathlib import Path

from ..core import events as ev
from ..core.errors import NlaError
from ..core.store.transcript import control_marker_warning, load_transcript
from ..core.types import Message
from .host import AppHost
from .screens.dialogs import PromptDialog, ValueDialog, check_temperature

EXAMPLE_PROMPT = "What does <concept><INJECT></concept> mean? Answer in <explanation></explanation> tags."
# Shown above the demo's example conversation (options.example): its model turns were
# written for the model and teacher-forced, since Gemma 3 270M is a base model.
EXAMPLE_NOTE = "teacher-forced example: base 270M is not a chat model · i to chat"


class Inputs:
    def __init__(self, host: AppHost) -> None:
        self.host = host
        # The demo's example transcript opens once its models are ready, unless the user
        # has chatted or opened something by then (see open_example).
        self.example_pending = bool(host.options.example) and not host.options.messages
        self.example_capturing = False  # its capture is on the way (not the user's work: not saved)

    def temperature(self) -> None:
        host = self.host

        def done(value: str | None) -> None:
            if value is not None:
                host.temperature = float(value)
                host.update_status()
        host.push_screen(ValueDialog("AV temperature (0 = greedy, up to 2)", f"{host.temperature:g}",
                                     validate=check_temperature), done)

    def prompt(self) -> None:
        host = self.host

        def done(value: str | None) -> None:
            if value is None:
                return
            host.av_prompt = value or None
            host.notify("AV prompt: " + ("custom" if value else "checkpoint default"), timeout=3)
        host.push_screen(PromptDialog(host.av_prompt or EXAMPLE_PROMPT), done)

    def open_transcript_dialog(self) -> None:
        def done(value: str | None) -> None:
            if value:
                self.open_transcript(value)
        self.host.push_screen(ValueDialog("Open transcript (JSON list of {role, content})",
                                          placeholder="path/to/chat.json"), done)

    def warn_control_markers(self, messages: list[Message | str]) -> None:
        """Chat-template markers typed as text become real control tokens: say so."""
        marker = control_marker_warning([m if isinstance(m, Message) else Message("user", m) for m in messages])
        if marker:
            self.host.notify(marker.replace("message 0 (user)", "your message"), severity="warning", timeout=8)

    def open_transcript(self, path: str | Path) -> None:
        host = self.host
        try:
            messages = load_transcript(path)
        except NlaError as e:
            host.notify(str(e), title="Cannot open transcript", severity="error", timeout=10)
            return
        self.warn_control_markers(messages)
        host.state.notes = []  # they were on the conversation this one replaces
        host.chat.show_note(None)
        host.strip.follow = False
        host.submit(ev.SetConversation(messages))

    def open_example(self) -> None:
        """Models ready: on the demo preset with nothing else to show, open the shipped
        example conversation (teacher-forced) and say so above it; chat stays available."""
        host = self.host
        info = host.state.info
        if not self.example_pending or info is None or info.preset != "demo" or host.state.tokens:
            return
        self.example_pending = False
        try:
            messages = load_transcript(host.options.example)
        except NlaError as e:  # a broken install: the app still works without it
            host.notify(str(e), title="Cannot open the example", severity="warning", timeout=8)
            return
        host.strip.follow = False
        host.submit(ev.SetConversation(messages))
        host.chat.show_note(EXAMPLE_NOTE)
        self.example_capturing = True
