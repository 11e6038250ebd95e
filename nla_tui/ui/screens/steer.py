"""Steer and compare screens: the explanation editor, the steered result
(top-5 before/after, continuations side by side with the differences marked) and the
compare result. Pure views over core.steer_results data; no torch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Checkbox, ContentSwitcher, Input, Label, RadioButton, RadioSet, Static, TextArea

from ...core.errors import InputError
from ...core.steer_results import Comparison, SteerResult, number_text, token_diff
from ...core.steer_sources import (MEDIAN_NORM, TOKEN_NORM, FileVector, ResolvedVector, SaeFeature, TextReading,
                                   TokenDifference, VectorSource, source_spec)
from ...core.store.vector_files import check_source
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
        return f"α must be a number (1 = one unit of the vector's norm, shown above); got {value!r}."
    if not math.isfinite(a) or abs(a) > MAX_ALPHA:
        return f"α must be a finite number between -{MAX_ALPHA:g} and {MAX_ALPHA:g}."
    return None


# The dialog's sources: radio id → what it is called.
SOURCES = {"text": "edited explanation", "file": "vector file", "difference": "a − b", "sae": "SAE feature"}


@dataclass
class SteerContext:
    """What the dialog knows of the session, to check a source and show its vector before
    anything runs: the model's width and layer K, the captured activations (a − b, the
    median norm), the marked token (c) for a − b's default, the source used last."""

    d_model: int | None = None
    layer: int | None = None
    activations: Any = None
    marked: int | None = None
    last: VectorSource | None = None


class SteerDialog(ModalScreen[tuple[VectorSource, float, str] | None]):
    """Pick where the steering vector comes from (edit the token's explanation, a vector
    file, a − b of two tokens, an SAE feature), see its norm, the layer and alpha's unit;
    ctrl+s steers, Esc cancels."""

    AUTO_FOCUS = "#steer-area"
    BINDINGS = [Binding("ctrl+s", "steer", "steer"), Binding("escape", "dismiss_none", "cancel")]

    def __init__(self, index: int, token: str, original: str | None, alpha: float = DEFAULT_ALPHA, span: str = "here",
                 context: SteerContext | None = None) -> None:
        super().__init__()
        self.index, self.token, self.original = index, token, original
        self.alpha, self.span = alpha, span
        self.context = context or SteerContext()
        last = self.context.last
        self.kind = ("text" if original is not None and (last is None or isinstance(last, TextReading)) else
                     source_spec(last)["kind"] if last is not None and not isinstance(last, TextReading) else "file")
        if self.kind == "text" and original is None:
            self.kind = "file"

    def compose(self) -> ComposeResult:
        last, ctx = self.context.last, self.context
        file = last if isinstance(last, FileVector) else FileVector("")
        sae = last if isinstance(last, SaeFeature) else SaeFeature("", 0)
        a = ctx.marked if ctx.marked is not None and ctx.marked != self.index else self.index
        b = self.index if a != self.index else None
        if isinstance(last, TokenDifference):
            a, b = last.a, last.b
        with Vertical(classes="dialog -steer"):
            yield Static(f"Steer token {self.index} {safe_text(repr(self.token))}: add a vector at layer "
                         f"{'K' if ctx.layer is None else ctx.layer} and regenerate from here. ctrl+s steers, "
                         "Esc cancels.", classes="dialog-title")
            with RadioSet(id="steer-source"):
                for kind, label in SOURCES.items():
                    yield RadioButton(label, value=kind == self.kind, id=f"source-{kind}")
            with ContentSwitcher(initial=f"src-{self.kind}", id="steer-sources"):
                with Vertical(id="src-text"):
                    yield TextArea(self.original or "", id="steer-area", disabled=self.original is None)
                with Vertical(id="src-file"):
                    yield Label(literal("a .safetensors or .npy file holding one vector [d_model]; the tensor's name "
                                        "if it holds several"), classes="dim steer-hint")
                    with Horizontal(classes="steer-row"):
                        yield Input(value=file.path, placeholder="path/to/vector.npy", id="steer-file")
                        yield Input(value=file.name or "", placeholder="tensor (optional)", id="steer-name")
                with Vertical(id="src-difference"):
                    yield Label(literal("activation[a] − activation[b] of two tokens of this conversation (a: the "
                                        "token marked with c, b: the cursor)"), classes="dim steer-hint")
                    with Horizontal(classes="steer-row"):
                        yield Label("a", classes="steer-label")
                        yield Input(value="" if a is None else str(a), id="steer-a", type="integer")
                        yield Label("b", classes="steer-label")
                        yield Input(value="" if b is None else str(b), id="steer-b", type="integer")
                with Vertical(id="src-sae"):
                    yield Label(literal("decoder row W_dec[feature] of a local sae-lens SAE (cfg.json + "
                                        "sae_weights.safetensors); any layer: steer with an SAE of another layer"),
                                classes="dim steer-hint")
                    with Horizontal(classes="steer-row"):
                        yield Input(value=sae.directory, placeholder="path/to/sae-directory", id="steer-sae")
                        yield Input(value=str(sae.feature) if sae.directory else "", placeholder="feature",
                                    id="steer-feature", type="integer")
                        yield Checkbox("any layer", value=sae.any_layer, id="steer-any-layer")
            yield Label("", id="steer-vector")
            with Horizontal(id="steer-options"):
                yield Label("strength α", classes="steer-label")
                yield Input(value=f"{self.alpha:g}", id="steer-alpha")
                yield Label("span", classes="steer-label")
                with RadioSet(id="steer-span"):
                    yield RadioButton("here", value=self.span == "here", id="span-here")
                    yield RadioButton("onward", value=self.span == "onward", id="span-onward")
            yield Label("", id="dialog-error", classes="dialog-error")

    def on_mount(self) -> None:
        self.show_vector()

    @on(RadioSet.Changed, "#steer-source")
    def _source_picked(self, event: RadioSet.Changed) -> None:
        self.kind = (event.pressed.id or "source-text").removeprefix("source-")
        self.query_one(ContentSwitcher).current = f"src-{self.kind}"
        self.show_vector()

    @on(Input.Changed)
    @on(Checkbox.Changed)
    def _typed(self, event) -> None:
        self.show_vector()

    # ------------------------------------------------------------ the source and its vector

    def _value(self, widget_id: str) -> str:
        return self.query_one(f"#{widget_id}", Input).value.strip()

    def source(self) -> VectorSource:
        """The source the dialog shows now (an InputError says what is missing)."""
        if self.kind == "text":
            if self.original is None:
                raise InputError("This token has no explanation to edit: explain it first (e), or pick another source.")
            edited = self.query_one(TextArea).text
            if not edited.strip():
                raise InputError("The edited explanation is empty.")
            if edited.strip() == self.original.strip():
                raise InputError("Change the explanation first: steering needs a difference.")
            return TextReading(self.index, edited, self.original)
        if self.kind == "file":
            if not self._value("steer-file"):
                raise InputError("Type the path of a .safetensors or .npy file.")
            return FileVector(self._value("steer-file"), self._value("steer-name") or None)
        if self.kind == "difference":
            try:
                return TokenDifference(int(self._value("steer-a")), int(self._value("steer-b")))
            except ValueError:
                raise InputError("a and b are token indices (the marked token and the cursor, say).") from None
        if not self._value("steer-sae"):
            raise InputError("Type the directory of an SAE saved by sae-lens.")
        try:
            feature = int(self._value("steer-feature"))
        except ValueError:
            raise InputError("Type the SAE feature's number (its decoder row).") from None
        return SaeFeature(self._value("steer-sae"), feature, any_layer=self.query_one(Checkbox).value)

    def checked(self) -> tuple[VectorSource, ResolvedVector | None]:
        """The source, read and validated (a file's size, dtype and values, an SAE's layer, a − b's
        tokens); the vector when it is known before the models run (all but a text reading)."""
        ctx = self.context
        source = self.source()
        if ctx.d_model is None or ctx.layer is None:
            return source, None
        n = len(ctx.activations) if ctx.activations is not None else 1 << 62
        return source, check_source(source, ctx.d_model, ctx.layer, n, ctx.activations)

    def show_vector(self) -> None:
        """The vector's norm, the layer and what α multiplies, or what is wrong with the source."""
        label = self.query_one("#steer-vector", Label)
        layer = "K" if self.context.layer is None else str(self.context.layer)
        try:
            # An edited explanation is checked on ctrl+s, not at every keystroke of the edit.
            source, resolved = (TextReading(self.index, "", self.original), None) if self.kind == "text" \
                else self.checked()
        except InputError as e:
            label.update(literal(f"vector: {e}"))
            label.set_class(True, "-error")
            return
        label.set_class(False, "-error")
        if isinstance(source, TextReading):
            norm = (None if self.context.activations is None
                    else float(np.linalg.norm(np.asarray(self.context.activations[self.index], np.float64))))
            text = (f"vector: AR(edited) − AR(original), made when you steer · layer {layer} · α × {TOKEN_NORM}"
                    + ("" if norm is None else f" (= {number_text(norm)})"))
        elif resolved is None:
            text = f"vector: {source.describe()} · layer {layer} · α × {MEDIAN_NORM}"
        else:
            unit = f" (= {number_text(resolved.unit_norm)})" if resolved.unit else ""
            text = (f"vector: {source.describe()} · ‖v‖ {number_text(resolved.norm)} · layer {layer} · "
                    f"α × {MEDIAN_NORM}{unit}" + "".join(f" · ⚠ {w}" for w in resolved.warnings))
        label.update(literal(safe_text(text)))

    def action_steer(self) -> None:
        alpha = self.query_one("#steer-alpha", Input).value
        error = check_alpha(alpha)
        source = None
        if error is None:
            try:
                source, _ = self.checked()
            except InputError as e:
                error = str(e)
        if error or source is None:
            self.query_one("#dialog-error", Label).update(literal(error or "No source."))
            return
        pressed = self.query_one("#steer-span", RadioSet).pressed_button
        span = "onward" if pressed is not None and pressed.id == "span-onward" else "here"
        self.dismiss((source, float(alpha), span))

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
            head.append("vector: ", style="dim")
            raw = f" · ‖raw‖ {number_text(b.source['norm'])}" if b.source and b.source_kind != "text" else ""
            head.append(safe_text(f"{b.source_text}{raw} · α × {b.unit_text}"))
            for warning in (b.source or {}).get("warnings", []):
                head.append(f"\n⚠ {safe_text(warning)}", style="yellow")
            if b.source_kind == "text":
                head.append("\nedited: ", style="dim")
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
