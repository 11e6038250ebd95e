"""Branches (issue 26 item 1): the dialog that edits a message into a new branch (E) and
the list that switches between branches (B). Views over core/branch_tree.py data; the
Branching controller (ui/branch_actions.py) sends the jobs."""

from __future__ import annotations

from typing import Callable

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList, TextArea
from textual.widgets.option_list import Option

from ...core.branch_tree import Branch, BranchTree
from ...core.types import Message
from ...terminal_text import visible
from ..literal import literal

PREVIEW = 48  # characters of an edited message shown in the branch list


def message_role(message: Message) -> str:
    """How the dialog and the list name a message: the transcript's roles, as the strip colours them."""
    if message.role == "tool":
        return "tool result"
    if message.role == "assistant":
        return "tool call" if message.tool_calls and not message.content.strip() else "assistant"
    return message.role


class EditMessageDialog(ModalScreen[tuple[str, str] | None]):
    """Edit message `message` (its text in an editor, an optional label for the branch).
    ctrl+s runs the edit, Esc cancels; `validate` (the core's own check) keeps the dialog
    open with its one-line error. Dismisses with (text, label)."""

    AUTO_FOCUS = "#edit-area"
    BINDINGS = [Binding("ctrl+s", "run", "re-run"), Binding("escape", "dismiss_none", "cancel")]

    def __init__(self, message: int, role: str, text: str, branch: int,
                 validate: Callable[[str, str], str | None]) -> None:
        super().__init__()
        self.message, self.role, self.text, self.branch = message, role, text, branch
        self.validate_fn = validate

    def compose(self) -> ComposeResult:
        where = "the conversation as captured" if self.branch == 0 else f"branch {self.branch}"
        with Vertical(classes="dialog -edit"):
            yield Label(literal(f"Edit message {self.message} ({self.role}) of {where}: it forks into a new "
                                "branch, re-read from the first changed token (later messages kept). "
                                "ctrl+s re-runs · Esc cancels"), classes="dialog-title")
            yield TextArea(self.text, id="edit-area")
            with Horizontal(id="edit-options"):
                yield Label("branch label", classes="edit-label")
                yield Input(placeholder="optional: what this version tries", id="edit-label")
            yield Label("", id="dialog-error", classes="dialog-error")

    def action_run(self) -> None:
        text = self.query_one(TextArea).text
        label = self.query_one("#edit-label", Input).value
        error = self.validate_fn(text, label)
        if error:
            self.query_one("#dialog-error", Label).update(literal(error))
            return
        self.dismiss((text, label.strip()))

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


def branch_line(tree: BranchTree, branch: Branch) -> Text:
    """One row of the branch list: the tree's indent, id and title, then where it comes
    from and the start of the message it changed (data: shown as literal text)."""
    t = Text("  " * tree.depth(branch.id))
    t.append(f"{branch.id:>2} ", style="bold")
    t.append(visible(branch.title, keep_layout=False)[:40], style="bold green" if branch.id == tree.current else "bold")
    if branch.is_root:
        t.append(f"  {len(branch.tokens)} tokens", style="dim")
    else:
        edited = branch.messages[branch.edited] if branch.edited is not None and \
            branch.edited < len(branch.messages) else None
        t.append(f"  from {branch.parent} · message {branch.edited}", style="dim")
        if edited is not None:
            t.append(f" ({message_role(edited)}): ", style="dim")
            flat = " ".join(edited.content.split())
            t.append(visible(flat[:PREVIEW] + ("…" if len(flat) > PREVIEW else "")))
        if branch.first_changed is not None:
            t.append(f" · from token {branch.first_changed}", style="dim")
    if branch.id == tree.current:
        t.append("  ◂ shown", style="bold green")
    return t


class BranchesScreen(ModalScreen[int | None]):
    """Every branch, depth first from the conversation as captured: Enter shows the
    highlighted one, Esc (or B) closes."""

    AUTO_FOCUS = "#branches-list"
    BINDINGS = [Binding("escape,B", "dismiss_none", "close")]

    def __init__(self, tree: BranchTree) -> None:
        super().__init__()
        self.branch_tree = tree
        self.order = tree.ordered()

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog -branches"):
            yield Label(f"Branches ({len(self.order)}) · Enter shows one · E on a message makes another · Esc closes",
                        classes="dialog-title")
            yield OptionList(*[Option(branch_line(self.branch_tree, b)) for b in self.order], id="branches-list")

    def on_mount(self) -> None:
        listing = self.query_one(OptionList)
        listing.highlighted = next((k for k, b in enumerate(self.order) if b.id == self.branch_tree.current), 0)

    @on(OptionList.OptionSelected)
    def _show(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(self.order[event.option_index].id)

    def action_dismiss_none(self) -> None:
        self.dismiss(None)
