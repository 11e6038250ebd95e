"""A worker that serves events from a saved session instead of running models.

Two uses:
- tests and screenshots replay a real recorded session (tests/data/recorded_session)
  so layout snapshots are deterministic without loading a model;
- `nla-tui open DIR` browses a saved session on a machine without a GPU
  (preload=True: the whole session is shown at once and chatting is refused).

Same surface and the same scheduling as EngineWorker (both are scheduler.JobThread:
priority, replacement by key, stale-explain cancel, cancel drops background work);
events go out through `emit`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .. import events as ev
from ..branch_jobs import AdoptBranches, BranchExplainDone, BranchList, BranchShown, EditMessage, ExplainOnBranch, \
    ListBranches, SwitchBranch
from ..steer_results import Comparison, compare_activations
from ..errors import NlaError
from ..pair_jobs import ExplainWithPair, PairExplainDelta, PairExplainDone, PairReady
from ..steer_jobs import Compare, CompareDone, Steer, SteerDone
from ..steer_sources import TextReading, VectorSource, source_from_record
from ..store.session import Session, load_session
from ..types import Explanation, TokenInfo, group_by_index
from .progress import RowProgress
from .scheduler import JobThread

READ_ONLY_NOTE = ("Read-only session: models are not loaded, so only the recorded explanations "
                  "can be shown. Press L to load this session's models and explain new tokens.")


def _steer_key(source: VectorSource) -> VectorSource:
    """A source as a recorded steer matches it: a text reading by its edit alone (the job may
    leave the original to the worker)."""
    return TextReading(source.index, source.edited) if isinstance(source, TextReading) else source


class ReplayWorker(JobThread):
    thread_name = "nla-replay"

    def __init__(self, session: Session | str | Path, emit: Callable[[ev.Event], None],
                 *, preload: bool = False, comparisons: list[Comparison] | None = None):
        super().__init__(emit)
        self.session = session if isinstance(session, Session) else load_session(session)
        self.preload = preload
        self._turn = 0  # next conversation message to replay
        self._by_index: dict[int, list[Explanation]] = group_by_index(self.session.explanations)
        self.comparisons = list(comparisons or [])  # recorded Compare results (screenshots)
        self.handlers = {ev.LoadModels: self._load, ev.Chat: self._chat,
                         ev.SetConversation: self._set_conversation,
                         ev.Explain: lambda job: self._explain(job.index),
                         ev.ExplainAll: lambda job: self._explain_all(job.indices),
                         Steer: self._steer, Compare: self._compare,
                         EditMessage: self._edit, SwitchBranch: self._switch_branch,
                         ListBranches: lambda job: self.emit(BranchList(self.tree.snapshot())),
                         ExplainOnBranch: self._explain_on_branch, AdoptBranches: self._adopt,
                         ExplainWithPair: self._explain_with_pair}
        self.tree = self.session.branch_tree()
        self.tree.current = 0  # the replay starts on the conversation as captured
        self.submit(ev.LoadModels())  # like EngineWorker(autoload=True)

    # ------------------------------------------------------------ jobs

    paced = False  # a subclass that paces its pieces (tests/_support_ui.py) reports an ETA

    def _sleep(self, piece: int = 0) -> bool:
        """Before streamed piece number `piece` (1-based): True when cancelled. The product
        replays at once; the tests' subclass paces or holds here."""
        return self.cancel.is_set()

    def _load(self, job: ev.LoadModels) -> None:
        s = self.session
        for model in ("subject", "av", "ar"):
            self.emit(ev.LoadProgress(model, 1.0, f"{model}: replayed from {s.name}"))
        self.emit(ev.ModelsReady(s.info))
        if s.extra_pair is not None:
            self.emit(PairReady(s.extra_pair))
        if self.preload:
            self._turn = len(s.messages)
            self.emit(ev.ConversationUpdated(list(s.messages), list(s.tokens), s.activations))
            for index, exps in sorted(self._by_index.items()):
                self.emit(ev.ExplainDone(index, exps, cached=True))
            for index, exps in sorted(group_by_index(s.pair_explanations).items()):
                self.emit(PairExplainDone(s.extra_pair.name, index, exps, cached=True))
            if s.branches:
                self.emit(BranchList(self.tree.snapshot()))

    def _set_conversation(self, job: ev.SetConversation) -> None:
        self._turn = len(job.messages)
        self.emit(self._updated(len(job.messages)))

    def _tokens_through(self, turn: int) -> list[TokenInfo]:
        return [t for t in self.session.tokens if t.turn <= turn]

    def _updated(self, n_messages: int) -> ev.ConversationUpdated:
        """The first n messages, their tokens and (like EngineWorker) their activations."""
        s = self.session
        toks = self._tokens_through(n_messages - 1)
        acts = None if s.activations is None else s.activations[: len(toks)]
        return ev.ConversationUpdated(list(s.messages[:n_messages]), toks, acts)

    def _chat(self, job: ev.Chat) -> None:
        s = self.session
        if self.preload:
            raise NlaError("This is a saved session opened without models; run `nla-tui` to chat.")
        user = next((i for i in range(self._turn, len(s.messages)) if s.messages[i].role == "user"), None)
        if user is None or user + 1 >= len(s.messages):
            raise NlaError("The recorded session has no more turns to replay.")
        reply_turn = user + 1
        reply = [t for t in s.tokens if t.turn == reply_turn and t.role == "model"]
        first = reply[0].index if reply else len(self._tokens_through(reply_turn))
        self.emit(ev.ChatStarted([t for t in s.tokens if t.index < first]))
        for piece, tok in enumerate(reply, 1):
            if self._sleep(piece):
                return
            self.emit(ev.ChatDelta(tok.text))
        self._turn = reply_turn + 1
        self.emit(self._updated(reply_turn + 1))

    def _explain(self, index: int) -> None:
        shown = self._by_index if self.tree.current == 0 else self.tree.shown.explanations
        exps = shown.get(index)
        if not exps:
            raise NlaError(READ_ONLY_NOTE if self.preload else
                           f"The recorded session has no explanation for token {index}.")
        self.emit(ev.ExplainStarted(index))
        text = exps[0].text
        for cut in (len(text) // 3, 2 * len(text) // 3):
            if self._sleep():
                return
            self.emit(ev.ExplainDelta(index, text[:cut]))
        self.emit(ev.ExplainDone(index, exps))

    def _explain_with_pair(self, job: ExplainWithPair) -> None:
        """The extra pair's recorded explanation of the token (the root conversation's)."""
        s = self.session
        if s.extra_pair is None or s.extra_pair.name != job.pair:
            raise NlaError(f"This session has no {job.pair!r} pair: it was recorded without --extra-pair.")
        exps = [e for e in s.pair_explanations if e.index == job.index] if self.tree.current == 0 else []
        if not exps:
            raise NlaError(READ_ONLY_NOTE if self.preload else
                           f"The recorded session has no extra-pair explanation for token {job.index}.")
        self.emit(PairExplainDelta(job.pair, job.index, ""))
        text = exps[0].text
        if self._sleep():
            return
        self.emit(PairExplainDelta(job.pair, job.index, text[:len(text) // 2]))
        self.emit(PairExplainDone(job.pair, job.index, exps))

    def _steer(self, job: Steer) -> None:
        """The recorded steered continuation of exactly this request (tests, screenshots): the
        same token, source, alpha and span; anything else needs the models."""
        want = _steer_key(job.steering_source())
        result = next((b for b in reversed(self.session.steered)
                       if (b.index, b.alpha, b.span) == (job.index, job.alpha, job.span)
                       and _steer_key(source_from_record(b.source, b.index, b.edited_explanation,
                                                         b.original_explanation)) == want), None)
        if result is None:
            raise NlaError(READ_ONLY_NOTE if self.preload else
                           f"The recorded session has no steered continuation for token {job.index}.")
        self.emit(SteerDone(result))

    def _compare(self, job: Compare) -> None:
        """A recorded comparison of that pair; otherwise cos(a, b) from the saved
        activations, and a note that explaining the difference needs the models."""
        rec = next((c for c in self.comparisons if (c.i, c.j) == (job.i, job.j)), None)
        if rec is None:
            if self.session.activations is None:
                raise NlaError(READ_ONLY_NOTE)
            rec = compare_activations(self.session.activations, job.i, job.j,
                                      "Explaining a − b and b − a needs the models: press L to load them.")
        self.emit(CompareDone(rec))

    def _edit(self, job: EditMessage) -> None:
        raise NlaError("Editing a message re-runs the subject: " + (READ_ONLY_NOTE if self.preload else
                       "the recorded session cannot make new branches."))

    def _switch_branch(self, job: SwitchBranch) -> None:
        """A recorded branch: its conversation, tokens and explanations (its activations
        are the root's only: the others live in the activation cache of the machine that
        made them)."""
        branch = self.tree.get(job.branch)
        self.tree.current = branch.id
        self.emit(ev.ConversationUpdated(list(branch.messages), list(branch.tokens), branch.activations))
        snap = self.tree.snapshot()
        self.emit(BranchShown(snap.shown, snap, snap.diff(branch.id), created=False))

    def _adopt(self, job: AdoptBranches) -> None:
        """The recorded tree is the replay's own: show the branch asked for."""
        self._switch_branch(SwitchBranch(job.current))

    def _explain_on_branch(self, job: ExplainOnBranch) -> None:
        branch = self.tree.get(job.branch)
        if branch.id == self.tree.current:
            self._explain(job.index)
            return
        exps = branch.explanations.get(job.index)
        if not exps:
            raise NlaError(READ_ONLY_NOTE if self.preload else
                           f"The recorded session has no explanation for token {job.index} of branch {branch.id}.")
        self.emit(BranchExplainDone(branch.id, job.index, exps, cached=True))

    def _explain_all(self, indices: list[int]) -> None:
        if self.preload:  # everything recorded is already shown; new tokens need models
            raise NlaError(READ_ONLY_NOTE)
        total = len(indices)
        # The same counting as EngineWorker; the ETA is deterministic (None) unless the
        # replay is pacing itself.
        progress = RowProgress(total, report=lambda p: self.emit(
            ev.ExplainAllProgress(p.done, total, p.eta_s if self.paced else None)))
        for done, index in enumerate(indices, 1):
            if self._sleep(done):
                return
            exps = self._by_index.get(index)
            if exps:
                self.emit(ev.ExplainDone(index, exps))
            progress.batch_done(1)
