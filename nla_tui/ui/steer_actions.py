"""Steer (w: with an edited explanation, a vector file, a − b or an SAE feature) and compare (c): the jobs the keys submit and the screens their results open.

A controller of NlaApp (ui/host.py): the app binds the keys and hands every folded
`Change` to `changed`; the results arrive as data in the Change (UiState.apply unpacked
the event), never as raw events here.
"""

from __future__ import annotations

from ..core import events as ev
from ..core.steer_jobs import DEFAULT_ALPHA, Compare, Steer
from ..core.steer_sources import TextReading, VectorSource
from ..core.types import CONTINUATION_TOKENS
from .host import AppHost
from .screens.steer import CompareScreen, SteerContext, SteerDialog, SteeredScreen
from .state import Change


class Steering:
    def __init__(self, host: AppHost) -> None:
        self.host = host
        self.compare_mark: int | None = None  # token A of a comparison, until c on B
        # The dialog opens with the strength and span used last.
        self.alpha = DEFAULT_ALPHA
        self.span = "here"
        self.last_source: VectorSource | None = None  # and the source (a file path, an SAE…)

    def steer(self) -> None:
        host = self.host
        index = host.cursor_index()
        if index is None:
            return
        if host.needs_models("steering (it steers the subject model)"):
            return
        st = host.state
        best = st.best(index)
        info = st.info
        context = SteerContext(d_model=info.d_model if info else None, layer=info.layer if info else None,
                               activations=st.activations, marked=self.compare_mark, last=self.last_source)

        def done(result: tuple[VectorSource, float, str] | None) -> None:
            if result is None:
                return
            source, self.alpha, self.span = result
            self.last_source = source
            if isinstance(source, TextReading):  # the job as before: the edit and its original
                job = Steer(index, source.edited, original=source.original, alpha=self.alpha, span=self.span,
                            max_new_tokens=CONTINUATION_TOKENS, sampling=host.sampling(False))
            else:
                job = Steer(index, alpha=self.alpha, span=self.span, max_new_tokens=CONTINUATION_TOKENS,
                            sampling=host.sampling(False), source=source)
            host.submit(job)
            host.notify(f"Steering from token {index} with {source.describe()}: regenerating with and without "
                        "it…", timeout=4, markup=False)

        host.push_screen(SteerDialog(index, st.tokens[index].text, best.text if best else None, self.alpha,
                                     self.span, context), done)

    def compare(self) -> None:
        host = self.host
        index = host.cursor_index()
        if index is None:
            return
        if self.compare_mark is None:
            self.compare_mark = index
            host.notify(f"A = token {index} {host.state.tokens[index].text!r}. Move to B and press c "
                        "(Esc clears A).", timeout=5)
            return
        a, self.compare_mark = self.compare_mark, None
        host.submit(Compare(a, index, host.sampling(False)))
        host.notify(f"Comparing token {a} with token {index}: explaining a − b and b − a…", timeout=4)

    def clear_compare_mark(self) -> None:
        self.compare_mark = None

    def changed(self, change: Change) -> None:
        host, st = self.host, self.host.state
        progress = change.steer_progress
        if progress is not None:
            # The explain-all bar shows what the job does and how far it got (an upper
            # bound on the tokens left: explanations usually close early).
            bar = host.allbar
            bar.display = True
            bar.show_progress(progress.done, progress.total, progress.eta_s, progress.what, " tokens")
        elif change.ended is ev.JobKind.COMPARE:
            host.allbar.display = st.all_progress is not None
        if change.steered is not None:
            host.push_screen(SteeredScreen(change.steered, st.untrained_av))
        elif change.comparison is not None:
            c = change.comparison
            text = lambda i: st.tokens[i].text if 0 <= i < len(st.tokens) else "?"  # noqa: E731
            host.push_screen(CompareScreen(c, text(c.i), text(c.j), st.untrained_av))
