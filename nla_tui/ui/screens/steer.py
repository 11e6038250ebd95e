"""Steer and compare screens: the explanation editor, the steered result
(top-5 before/after, continuations side by side with the differences marked) and the
compare result. Pure views over core.steer_results data; no torch."""

from __future__ import annotations

import math

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Label, RadioButton, RadioSet, Static, TextArea

from ...core.steer_results import Comparison, SteerResult, token_diff
from ...core.steer_jobs import DEFAULT_ALPHA, MAX_ALPHA
from ...core.types import Candidate, Explanation
from ...terminal_text import visible
from ..literal import literal


def safe_text(text: str) -> str:
    """No control character reaches the terminal raw (newlines kept: continuations span lines)."""
    return visible(text)


UNTRAINED = "demo pair: the AV/AR are not trained, so the steering direction carries little meaning"


def check_alpha(value: str) -> str | None:
    try:
        a = float(value)
    except ValueError:
        return f"α must be a number (1 = the activation's own norm); got {value!r}."
    if not math.isfinite(a) or abs(a) > MAX_ALPHA:
        return f"α must be a finite number between -{MAX_ALPHA:g} and {MAX_ALPHA:g}."
    return None


class SteerDialog(ModalScreen[tuple[str, float, str] | None]):
    """Edit the token's explanation; ctrl+s steers, Esc cancels."""

    AUTO_FOCUS = "#steer-area"
    BINDINGS = [Binding("ctrl+s", "steer", "steer"), Binding("escape", "dismiss_none", "cancel")]

    def __init__(self, index: int, token: str, original: str, alpha: float = DEFAULT_ALPHA, span: str = "here") -> None:
        super().__init__()
        self.index, self.token, self.original = index, token, original
        self.alpha, self.span = alpha, span

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog -steer"):
            yield Static(f"Steer token {self.index} {safe_text(repr(self.token))}: what if it had meant… Edit its "
                         "explanation, then ctrl+s: the subject regenerates from here, steered by "
                         "AR(edited) − AR(original). Esc cancels.", classes="dialog-title")
            yield TextArea(self.original, id="steer-area")
            with Horizontal(id="steer-options"):
                yield Label("strength α (× ‖activation‖)", classes="steer-label")
                yield Input(value=f"{self.alpha:g}", id="steer-alpha")
                yield Label("span", classes="steer-label")
                with RadioSet(id="steer-span"):
                    yield RadioButton("here", value=self.span == "here", id="span-here")
                    yield RadioButton("onward", value=self.span == "onward", id="span-onward")
            yield Label("", id="dialog-error", classes="dialog-error")

    def action_steer(self) -> None:
        edited = self.query_one(TextArea).text
        alpha = self.query_one("#steer-alpha", Input).value
        error = (check_alpha(alpha) or
                 ("The edited explanation is empty." if not edited.strip() else None) or
                 ("Change the explanation first: steering needs a difference." if edited.strip() == self.original.strip()
                  else None))
        if error:
            self.query_one("#dialog-error", Label).update(literal(error))
            return
        pressed = self.query_one(RadioSet).pressed_button
        span = "onward" if pressed is not None and pressed.id == "span-onward" else "here"
        self.dismiss((edited, float(alpha), span))

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


def _candidates(title: str, cands: list[Candidate], other: list[Candidate]) -> Text:
    t = Text(title + "\n", style="bold")
    others = {c.token_id for c in other}
    for c in cands:
        style = "" if c.token_id in others else "bold yellow"
        t.append(f"  {c.prob:5.1%}  ", style="dim")
        t.append(safe_text(repr(c.text)) + "\n", style=style)
    return t


def _continuation(title: str, pieces: list[tuple[str, bool]]) -> Text:
    t = Text(title + "\n", style="bold")
    if not pieces:
        t.append("(nothing: the subject stopped at once)", style="dim")
    for text, changed in pieces:
        t.append(safe_text(text), style="black on yellow" if changed else "")
    return t


class SteeredScreen(ModalScreen[None]):
    """One steered continuation: before | after."""

    BINDINGS = [Binding("escape,q,enter", "dismiss", "close")]

    def __init__(self, result: SteerResult, untrained: bool = False) -> None:
        super().__init__()
        self.result, self.untrained = result, untrained

    def compose(self) -> ComposeResult:
        b = self.result
        left, right = token_diff(b.original_tokens, b.steered_tokens)
        with Vertical(classes="dialog -result"):
            head = Text(f"Steered at token {b.index} {safe_text(repr(b.token_text))} · layer {b.layer} · "
                        f"α {b.alpha:g} · span {b.span} · ‖v‖ {b.vector_norm:.1f}\n", style="bold")
            head.append("edited: ", style="dim")
            head.append(safe_text(b.edited_explanation))
            if self.untrained:
                head.append(f"\n{UNTRAINED}", style="italic yellow")
            yield Static(head, id="steer-head")
            with Horizontal(id="steer-cols"):
                with VerticalScroll(classes="steer-col"):
                    yield Static(_candidates("next token, before", b.before, b.after))
                    yield Static(_continuation("original continuation", left))
                with VerticalScroll(classes="steer-col"):
                    yield Static(_candidates("next token, steered", b.after, b.before))
                    yield Static(_continuation("steered continuation", right))
            yield Label("changed tokens highlighted · kept in the session's steered list · Esc closes",
                        classes="dim")


def _explanation_block(title: str, e: Explanation | None) -> Text:
    t = Text(title + "\n", style="bold")
    if e is None:
        return t
    t.append(safe_text(e.text) + "\n")
    if e.score is not None:
        s = e.score
        fve = "" if s.fve_nrm is None else f" · fve_nrm {s.fve_nrm:.2f}"
        t.append(f"AR score: cos {s.cos:.3f}{fve} · {s.label}\n", style="dim")
    return t


class CompareScreen(ModalScreen[None]):
    """cos(a, b) and the explanations of a − b and b − a."""

    BINDINGS = [Binding("escape,q,enter", "dismiss", "close")]

    def __init__(self, c: Comparison, a_text: str, b_text: str, untrained: bool = False) -> None:
        super().__init__()
        self.c, self.a_text, self.b_text, self.untrained = c, a_text, b_text, untrained

    def compose(self) -> ComposeResult:
        c = self.c
        head = Text(f"Compare A = token {c.i} {safe_text(repr(self.a_text))} with B = token {c.j} "
                    f"{safe_text(repr(self.b_text))}\n", style="bold")
        head.append(f"cos(a, b) {c.cos:.3f} · ‖a − b‖ {c.diff_norm:.1f}\n")
        if self.untrained:
            head.append("demo pair: the AV/AR are not trained; the text is not a faithful explanation\n",
                        style="italic yellow")
        with Vertical(classes="dialog -result"):
            yield Static(head)
            if c.message:
                yield Static(Text(c.message, style="yellow"))
            else:
                with Horizontal(id="steer-cols"):
                    yield Static(_explanation_block("a − b (what A has that B lacks)", c.a_minus_b),
                                 classes="steer-col")
                    yield Static(_explanation_block("b − a (what B has that A lacks)", c.b_minus_a),
                                 classes="steer-col")
            yield Label("Esc closes", classes="dim")
