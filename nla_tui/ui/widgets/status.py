"""The status line, the explain-all progress row and the strip legend."""

from __future__ import annotations

from rich.text import Text
from textual.containers import Horizontal
from textual.widgets import Label, Static

from ...core.fidelity_report import reference_precision
from ...core.types import CardMemory
from ...terminal_text import visible
from ..state import UiState
from .colors import legend_swatch


def gpu_memory_text(cards: list[CardMemory]) -> str | None:
    """'12.3/80 GiB' for one card; 'cuda:0 12.3/80 · cuda:1 30.1/80 GiB' for several.
    The worker sends the figures (GpuMemory): the UI never imports torch."""
    if not cards:
        return None
    gib = lambda c: f"{c.used / 2**30:.1f}/{c.total / 2**30:.0f}"  # noqa: E731
    if len(cards) == 1:
        return f"{gib(cards[0])} GiB"
    return " · ".join(f"cuda:{c.index} {gib(c)}" for c in cards) + " GiB"


def status_text(state: UiState, temperature: float, auto_explain: bool) -> Text:
    t = Text()
    info = state.info
    if info is None:
        if state.load_failed:
            t.append("models not loaded (see the error notice); browsing only", style="bold red")
        elif state.load:
            parts = " · ".join(f"{m} {f * 100:.0f}%" for m, f in state.load.items())
            t.append(f"loading {parts}", style="yellow")
            if state.load_message:
                t.append(f" — {state.load_message}", style="dim")
        else:
            t.append("starting models…", style="yellow")
    else:
        t.append(visible(info.preset or "custom"), style="bold")  # a saved session's text
        # On CUDA the placement says which card holds each model and its memory.
        where = info.placement if info.placement and info.device.startswith("cuda") else info.device
        t.append(visible(f" · L{info.layer} · {info.quant} · {where}"))
        if info.fidelity_drifts:  # the self-check found the running precision moves the readouts
            ref = reference_precision(info.device)
            t.append(f" · readouts drift from {ref}: try --quant auto or --subject-quant {ref}", style="bold red")
        elif info.fidelity:
            t.append(" · self-check ok", style="green")
        mem = gpu_memory_text(state.gpu_memory)
        if mem:
            t.append(f" · GPU {mem}")
        if info.untrained_av:
            t.append(" · untrained AV", style="magenta")
        elif info.pair_label:
            t.append(visible(f" · {info.pair_label}"), style="cyan")
    t.append(f" · queue {state.queue_depth}")
    t.append(f" · {len(state.tokens)} tok, {state.explained_count()} explained")
    if state.branches is not None and len(state.branches.branches) > 1:
        t.append(f" · branch {state.current_branch} of {len(state.branches.branches)}", style="bold #5fffff")
    t.append(f" · t={temperature:g}")
    if auto_explain:
        t.append(" · auto", style="green")
    return t


class StatusLine(Static):
    pass


BAR_CELLS = 30


def progress_bar(done: int, total: int, cells: int = BAR_CELLS) -> Text:
    """A fixed-width text bar. Textual's ProgressBar quantises against its size at
    update time, which made the same progress draw differently between runs."""
    halves = 0 if total <= 0 else round(2 * cells * min(done, total) / total)
    full, half = divmod(halves, 2)
    t = Text("━" * full, style="bold #5fafff")
    if half:
        t.append("╸", style="bold #5fafff")
    t.append("━" * (cells - full - half), style="#3a3a3a")
    return t


class ExplainAllBar(Horizontal):
    """Visible while an explain-all job runs."""

    def compose(self):
        yield Label("explain all", id="all-label")
        yield Label(progress_bar(0, 1), id="all-bar")
        yield Label("", id="all-eta")

    def show_progress(self, done: int, total: int, eta_s: float | None, label: str = "explain all",
                      unit: str = "") -> None:
        self.query_one("#all-label", Label).update(label)
        self.query_one("#all-bar", Label).update(progress_bar(done, total))
        pct = 100 * done // max(1, total)
        eta = "" if eta_s is None else f" · ETA {int(eta_s) // 60}:{int(eta_s) % 60:02d}"
        self.query_one("#all-eta", Label).update(f"{pct}% · {done:,}/{total:,}{unit}{eta} · Esc cancels")


def legend_text(show_special: bool, finding: str = "", changed: bool = False) -> Text:
    t = Text()
    if finding:  # first: the legend is cut at the pane's width, the search state must show
        t.append(f"{finding}  ", style="bold #d070d0")
    for v in (0.0, 0.5, 1.0):
        t.append(" ", style=legend_swatch("fid", v))
    t.append(" fidelity poor→good  ")
    for v in (0.0, 0.33, 0.66, 1.0):
        t.append(" ", style=legend_swatch("norm", v))
    t.append(" norm low→high  ")
    if changed:  # a branch is shown: its edited tokens are marked (token_strip._CHANGED)
        t.append("edited", style="bold #5fffff")
        t.append("  ")
    t.append("noisy", style="underline")
    t.append(f"  s:specials {'on' if show_special else 'off'}")
    return t


class Legend(Static):
    pass
