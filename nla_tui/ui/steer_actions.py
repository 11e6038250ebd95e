"""Steer (w) and compare (c) in the app: the keys, the jobs, and the result screens.

Kept out of app.py like session_actions.py; the app calls `steer_event(e)` for every
core event and `clear_compare_mark()` on Esc.
"""

from __future__ import annotations

from typing import Any

from ..core import events as ev
from ..core.steer_jobs import DEFAULT_ALPHA, Compare, CompareDone, SteerProgress, Steer, SteerDone
from ..core.types import CONTINUATION_TOKENS
from .screens.steer import CompareScreen, SteeredScreen, SteerDialog



class SteerActions:
    compare_mark: int | None = None
    steer_alpha: float = DEFAULT_ALPHA
    steer_span: str = "here"

    def action_steer(self) -> None:
        app: Any = self
        index = app._cursor()
        if index is None:
            return
        if app.needs_models("steering (it steers the subject model)"):
            return
        best = app.state.best(index)
        if best is None:
            app.notify("Explain this token first (e): steering edits its explanation.", severity="warning")
            return
        token = app.state.tokens[index].text

        def done(result: tuple[str, float, str] | None) -> None:
            if result is None:
                return
            edited, self.steer_alpha, self.steer_span = result
            app.submit(Steer(index, edited, original=best.text, alpha=self.steer_alpha, span=self.steer_span,
                              max_new_tokens=CONTINUATION_TOKENS,
                              sampling=app._sampling(False)))
            app.notify(f"Steering from token {index}: regenerating with and without the edit…", timeout=4)

        app.push_screen(SteerDialog(index, token, best.text, self.steer_alpha, self.steer_span), done)

    def action_compare(self) -> None:
        app: Any = self
        index = app._cursor()
        if index is None:
            return
        if self.compare_mark is None:
            self.compare_mark = index
            app.notify(f"A = token {index} {app.state.tokens[index].text!r}. Move to B and press c "
                       "(Esc clears A).", timeout=5)
            return
        a, self.compare_mark = self.compare_mark, None
        app.submit(Compare(a, index, app._sampling(False)))
        app.notify(f"Comparing token {a} with token {index}: explaining a − b and b − a…", timeout=4)

    def clear_compare_mark(self) -> None:
        self.compare_mark = None

    def steer_event(self, e: ev.Event) -> None:
        app: Any = self
        st = app.state
        if isinstance(e, SteerProgress):
            # The explain-all bar shows what the job does and how far it got (an upper
            # bound on the tokens left: explanations usually close early).
            bar = app.query_one("#allbar")
            bar.display = True
            bar.show_progress(e.done, e.total, e.eta_s, e.what, " tokens")
        elif isinstance(e, ev.JobFinished | ev.JobFailed) and e.kind is ev.JobKind.COMPARE:
            app.query_one("#allbar").display = app.state.all_progress is not None
        if isinstance(e, SteerDone):
            app.push_screen(SteeredScreen(e.result, st.untrained_av))
        elif isinstance(e, CompareDone):
            c = e.comparison
            text = lambda i: st.tokens[i].text if 0 <= i < len(st.tokens) else "?"  # noqa: E731
            app.push_screen(CompareScreen(c, text(c.i), text(c.j), st.untrained_av))
