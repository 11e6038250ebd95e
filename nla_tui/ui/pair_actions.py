"""The extra AV/AR pair in the TUI (issue 26 item 3; --extra-pair): 2 explains the token
under the cursor with it (ExplainWithPair, the same scheduler as e); on a token it has
explained, 2 shows or hides its section of the pane. A controller of NlaApp (ui/host.py);
the pair's explanations are UiState.pair_explanations, saved with the session."""

from __future__ import annotations

from ..core.pair_jobs import EXTRA, ExplainWithPair
from .host import AppHost

NO_PAIR = ("No extra pair is loaded: start nla-tui with --extra-pair av=DIR,ar=DIR[,label=NAME] to explain "
           "tokens with a second AV/AR pair.")


class PairView:
    def __init__(self, host: AppHost) -> None:
        self.host = host

    def explain_or_toggle(self) -> None:
        host, st = self.host, self.host.state
        if st.pair is None:
            host.notify(NO_PAIR, severity="warning", timeout=6, markup=False)
            return
        index = host.cursor_index()
        if index is None:
            return
        sampling = host.sampling(False)
        held = st.pair_explanations.get(index, [])
        if any(e.sampling == sampling and e.prompt == host.av_prompt for e in held):
            st.pair_shown = not st.pair_shown  # already explained with these settings: show / hide it
            host.pane.show(index)
            return
        st.pair_shown = True
        if not held and host.needs_models(f"explaining token {index} with the extra pair"):
            return
        host.submit(ExplainWithPair(index, EXTRA, sampling, host.av_prompt))
        host.pane.show(index)
