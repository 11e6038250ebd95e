"""C: open a sweep's output (nla-tui sweep), search it, and open a hit as a conversation
with the cursor on its token and the sweep's explanation (score and controls) in the
pane (a controller of NlaApp, ui/host.py, owned by Sessions). The conversation is recaptured by the loaded models, so its
other tokens can be explained as usual."""

from __future__ import annotations

from pathlib import Path

from ..core import events as ev
from ..core.corpus import index
from ..core.corpus.shards import require_sweep
from ..core.errors import NlaError
from ..core.types import Explanation, Message, Sampling, Score
from .host import AppHost
from .saving import SessionKeeper
from .screens.corpus import CorpusScreen
from .screens.dialogs import ValueDialog
from .state import Change


def explanation_from_hit(hit: index.Hit) -> Explanation:
    score = None if hit.cos is None else Score(hit.cos, hit.mse_nrm if hit.mse_nrm is not None else 2 * (1 - hit.cos),
                                               hit.fve_nrm)
    return Explanation(index=hit.token_index, text=hit.explanation, raw=hit.explanation,
                       sampling=Sampling(temperature=hit.temperature, max_new_tokens=hit.max_new_tokens,
                                         seed=hit.seed),
                       score=score, truncated=bool(hit.truncated), controls=hit.controls or None)


class Corpus:
    def __init__(self, host: AppHost, keeper: SessionKeeper) -> None:
        self.host, self.keeper = host, keeper
        self.corpus_dir: Path | None = None
        self._target: index.Hit | None = None  # the hit whose conversation is being captured

    def open_dialog(self) -> None:
        if self.corpus_dir is not None:
            self.show_corpus(self.corpus_dir)
            return

        def check(value: str) -> str | None:
            try:
                require_sweep(value)
            except NlaError as e:
                return str(e)
            return None

        def done(value: str | None) -> None:
            if value:
                self.show_corpus(Path(value).expanduser())
        self.host.push_screen(ValueDialog("Open a sweep's folder (nla-tui sweep … --out DIR)",
                                          placeholder="path/to/sweep", validate=check), done)

    def show_corpus(self, directory: Path) -> None:
        self.corpus_dir = directory
        try:
            index.sync(directory)  # shards a killed sweep wrote but did not index yet
        except NlaError as e:
            self.host.notify(str(e), title="Cannot open the sweep", severity="error", timeout=10)
            return
        self.host.push_screen(CorpusScreen(directory), self.open_corpus_hit)

    def open_corpus_hit(self, hit: index.Hit | None) -> None:
        if hit is None:
            return
        if self.keeper.read_only or self.host.state.info is None:
            self.host.notify("Opening a hit recaptures its conversation: load the models first (L).",
                             severity="warning", timeout=8)
            return
        raw = index.conversation_messages(self.corpus_dir, hit.conversation_id)
        if raw is None:
            self.host.notify(f"The sweep holds no messages for {hit.conversation_id!r}.", severity="error")
            return
        self.host.chat.show_note(None)
        self.host.state.notes = []  # they were on the conversation this one replaces
        self.host.strip.follow = False
        self._target = hit
        self.host.submit(ev.SetConversation([Message.from_json(m) for m in raw]))

    def changed(self, change: Change) -> None:
        """After the hit's conversation is captured: cursor on the token, the sweep's
        explanation shown (kept in the session like any other)."""
        hit = self._target
        if hit is None or not change.captured:
            return
        self._target = None
        st = self.host.state
        if not 0 <= hit.token_index < len(st.tokens) or st.tokens[hit.token_index].text != hit.token_text:
            self.host.notify("These models tokenize the conversation differently from the sweep's; the cursor "
                             "could not be placed on the hit.", severity="warning", timeout=8)
            return
        exp = explanation_from_hit(hit)
        if exp not in st.explanations.get(hit.token_index, []):
            st.explanations.setdefault(hit.token_index, []).insert(0, exp)
        self.host.strip.set_cursor(hit.token_index)
        self.host.strip.refresh_index(hit.token_index)
        self.host.pane.show(hit.token_index)
