"""A modal list of choices (Enter or the shown digit picks one, Esc cancels)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from ..literal import literal


class ChoiceDialog(ModalScreen[str | None]):
    AUTO_FOCUS = "#choices"
    BINDINGS = [Binding("escape", "dismiss_none", "cancel")] + [
        Binding(str(k), f"pick({k - 1})", show=False) for k in range(1, 10)]

    def __init__(self, title: str, choices: list[tuple[str, str]]) -> None:
        super().__init__()
        self.title_text = title
        self.choices = choices  # (id, label)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(literal(self.title_text), classes="dialog-title")
            yield OptionList(*[Option(literal(f"{k}  {label}"), id=cid) for k, (cid, label) in enumerate(self.choices, 1)],
                             id="choices")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(event.option.id)

    def action_pick(self, k: int) -> None:
        if 0 <= k < len(self.choices):
            self.dismiss(self.choices[k][0])

    def action_dismiss_none(self) -> None:
        self.dismiss(None)
