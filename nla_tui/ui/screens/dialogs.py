"""Small modal dialogs: one-line value prompts and the AV prompt editor."""

from __future__ import annotations

from typing import Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, TextArea

from ..literal import literal

INJECT = "<INJECT>"


class ValueDialog(ModalScreen[str | None]):
    """Ask for one value; `validate` returns an error message or None."""

    AUTO_FOCUS = "#dialog-input"

    BINDINGS = [Binding("escape", "dismiss_none", "cancel")]

    def __init__(self, title: str, value: str = "", placeholder: str = "",
                 validate: Callable[[str], str | None] | None = None) -> None:
        super().__init__()
        self.title_text = title
        self.value = value
        self.placeholder = placeholder
        self.validate_fn = validate

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(literal(self.title_text), classes="dialog-title")
            yield Input(value=self.value, placeholder=self.placeholder, id="dialog-input")
            yield Label("", id="dialog-error", classes="dialog-error")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        error = self.validate_fn(event.value) if self.validate_fn else None
        if error:
            self.query_one("#dialog-error", Label).update(literal(error))
            return
        self.dismiss(event.value)

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


class PromptDialog(ModalScreen[str | None]):
    """Edit the AV prompt. ctrl+s saves, Esc cancels, ctrl+r restores the default."""

    AUTO_FOCUS = "#prompt-area"

    BINDINGS = [
        Binding("ctrl+s", "save", "save"),
        Binding("ctrl+r", "default", "default prompt"),
        Binding("escape", "dismiss_none", "cancel"),
    ]

    def __init__(self, prompt: str | None) -> None:
        super().__init__()
        self.prompt = prompt

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog -tall"):
            yield Label(f"AV prompt — must contain {INJECT} (where the activation goes). "
                        "ctrl+s saves · ctrl+r default · Esc cancels", classes="dialog-title")
            yield TextArea(self.prompt or "", id="prompt-area")
            yield Label("", id="dialog-error", classes="dialog-error")

    def action_save(self) -> None:
        text = self.query_one(TextArea).text
        error = check_prompt(text)
        if error:
            self.query_one("#dialog-error", Label).update(literal(error))
            return
        self.dismiss(text)

    def action_default(self) -> None:
        self.dismiss("")  # "" = back to the checkpoint's own template

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


def check_prompt(text: str) -> str | None:
    if not text.strip():
        return "The prompt is empty; press ctrl+r to use the default template instead."
    n = text.count(INJECT)
    if n != 1:
        return (f"The prompt must contain {INJECT} exactly once (found {n}); it marks where "
                "the activation is injected.")
    return None


def check_temperature(text: str) -> str | None:
    try:
        v = float(text)
    except ValueError:
        return f"{text!r} is not a number; type e.g. 0 (greedy) or 0.7."
    if not 0 <= v <= 2:
        return f"Temperature {v} is out of range; use 0 (greedy) to 2."
    return None
