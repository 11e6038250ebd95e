"""The fidelity self-check's table (F): what the running precision costs the readouts, and the
verdict. The numbers come from the worker (FidelityChecked); the table's lines are the same
FidelityReport.table() `nla-tui check --fidelity` prints."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from ...core.fidelity_report import FidelityReport
from ..literal import literal


class FidelityScreen(ModalScreen[bool]):
    """Dismissed with True when the user asks to run the check again (r), else False."""

    BINDINGS = [Binding("escape,q,enter", "close", "close"), Binding("r", "recheck", "run again")]

    def __init__(self, report: FidelityReport, cached: bool) -> None:
        super().__init__()
        self.report, self.cached = report, cached

    def compose(self) -> ComposeResult:
        r = self.report
        with Vertical(classes="dialog -result", id="fidelity-dialog"):
            title = "Fidelity self-check" + (f" (cached, {r.created})" if self.cached else "")
            yield Label(literal(title), classes="dialog-title")
            with VerticalScroll(id="fidelity-table"):
                yield Static(literal("\n".join(r.table())), id="fidelity-lines")
            yield Label(literal(("DRIFTS: " if r.drifts else "ok: ") + r.short()),
                        classes="dialog-error" if r.drifts else "", id="fidelity-verdict")
            yield Label(literal("r runs it again · Esc closes · what the numbers mean: docs/FIDELITY.md"),
                        classes="steer-hint")

    def action_close(self) -> None:
        self.dismiss(False)

    def action_recheck(self) -> None:
        self.dismiss(True)
