"""A worker that serves events from a saved session instead of running models.

Two uses:
- tests and screenshots replay a real recorded session (tests/data/recorded_session)
  so layout snapshots are deterministic without loading a model;
- `nla-tui open DIR` browses a saved session on a machine without a GPU
  (preload=True: the whole session is shown at once and chatting is refused).

Same surface as core.worker.EngineWorker: start(), submit(job), cancel_current(),
stop(); one daemon thread; events go out through `emit`.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from pathlib import Path
from typing import Callable

from .. import events as ev
from ..branches import Comparison, compare_activations
from ..steer_jobs import Compare, CompareDone, WhatIf, WhatIfDone
from ..store.session import Session, load_session
from ..types import Explanation, TokenInfo

READ_ONLY_NOTE = ("Read-only session: models are not loaded, so only the recorded explanations "
                  "can be shown. Press L to load this session's models and explain new tokens.")


class ReplayWorker:
    def __init__(self, session: Session | str | Path, emit: Callable[[ev.Event], None],
                 *, preload: bool = False, delay: float = 0.0, hold_after: int | None = None,
                 comparisons: list[Comparison] | None = None):
        self.session = session if isinstance(session, Session) else load_session(session)
        self.emit = emit
        self.preload = preload
        self.delay = delay  # seconds between streamed pieces (tests of cancel / progress)
        # A chat reply or an explain-all stops after this many pieces until `release`
        # is set or the job is cancelled: tests get a job that is reliably "still
        # running" without depending on timing.
        self.hold_after = hold_after
        self.release = threading.Event()
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._seq = itertools.count()
        self._cancel = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._depth = 0  # queued + running, like EngineWorker.depth
        self._thread = threading.Thread(target=self._run, name="nla-replay", daemon=True)
        self._turn = 0  # next conversation message to replay
        self._by_index: dict[int, list[Explanation]] = {}
        for e in self.session.explanations:
            self._by_index.setdefault(e.index, []).append(e)
        self.comparisons = list(comparisons or [])  # recorded Compare results (tests, screenshots)
        self.jobs_seen: list[ev.Job] = []  # what the UI asked for (tests assert on it)
        self.submit(ev.LoadModels())  # like EngineWorker(autoload=True)

    # ------------------------------------------------------------ surface

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: ev.Job) -> None:
        self.jobs_seen.append(job)
        with self._lock:
            self._depth += 1
            depth = self._depth
            self._queue.put((job.priority, next(self._seq), job))
        self.emit(ev.QueueDepth(depth))

    def cancel_current(self) -> None:
        self._cancel.set()

    def stop(self) -> None:
        self._stop.set()
        self._cancel.set()
        self._queue.put((-1, next(self._seq), None))

    # ------------------------------------------------------------ loop

    def _run(self) -> None:
        while not self._stop.is_set():
            _, _, job = self._queue.get()
            if job is None:
                return
            self._cancel.clear()
            name = type(job).__name__
            try:
                cancelled = self._handle(job)
            except Exception as e:  # a replay bug must not kill the thread either
                self.emit(ev.JobFailed(name, f"{type(e).__name__}: {e}"))
            else:
                if cancelled is not None:
                    self.emit(ev.JobFinished(name, cancelled=cancelled))
            with self._lock:
                self._depth -= 1
                depth = self._depth
            self.emit(ev.QueueDepth(depth))

    def _sleep(self, piece: int = 0) -> bool:
        """Pause before piece number `piece` (1-based); True when cancelled."""
        if self.hold_after is not None and piece > self.hold_after:
            while not (self.release.is_set() or self._cancel.is_set()):
                self._cancel.wait(0.01)
        if self.delay:
            self._cancel.wait(self.delay)
        return self._cancel.is_set()

    def _handle(self, job: ev.Job) -> bool | None:
        s = self.session
        if isinstance(job, ev.LoadModels):
            for model in ("subject", "av", "ar"):
                self.emit(ev.LoadProgress(model, 1.0, f"{model}: replayed from {s.name}"))
            self.emit(ev.ModelsReady(s.info))
            if self.preload:
                self._turn = len(s.messages)
                self.emit(ev.ConversationUpdated(list(s.messages), list(s.tokens), s.activations))
                for index, exps in sorted(self._by_index.items()):
                    self.emit(ev.ExplainDone(index, exps, cached=True))
            return False
        if isinstance(job, ev.Chat):
            return self._chat()
        if isinstance(job, ev.SetConversation):
            n = len(job.messages)
            self._turn = n
            self.emit(self._updated(n))
            return False
        if isinstance(job, ev.Explain):
            return self._explain(job.index)
        if isinstance(job, ev.ExplainAll):
            return self._explain_all(job.indices)
        if isinstance(job, WhatIf):
            return self._what_if(job)
        if isinstance(job, Compare):
            return self._compare(job)
        raise ValueError(f"replay cannot run {type(job).__name__}")

    def _tokens_through(self, turn: int) -> list[TokenInfo]:
        return [t for t in self.session.tokens if t.turn <= turn]

    def _updated(self, n_messages: int) -> ev.ConversationUpdated:
        """The first n messages, their tokens and (like EngineWorker) their activations."""
        s = self.session
        toks = self._tokens_through(n_messages - 1)
        acts = None if s.activations is None else s.activations[: len(toks)]
        return ev.ConversationUpdated(list(s.messages[:n_messages]), toks, acts)

    def _chat(self) -> bool | None:
        s = self.session
        if self.preload:
            self.emit(ev.JobFailed("Chat", "This is a saved session opened without models; "
                                   "run `nla-tui` to chat."))
            return None
        user = next((i for i in range(self._turn, len(s.messages)) if s.messages[i].role == "user"), None)
        if user is None or user + 1 >= len(s.messages):
            self.emit(ev.JobFailed("Chat", "The recorded session has no more turns to replay."))
            return None
        reply_turn = user + 1
        reply = [t for t in s.tokens if t.turn == reply_turn and t.role == "model"]
        first = reply[0].index if reply else len(self._tokens_through(reply_turn))
        self.emit(ev.ChatStarted([t for t in s.tokens if t.index < first]))
        for piece, tok in enumerate(reply, 1):
            if self._sleep(piece):
                return True
            self.emit(ev.ChatDelta(tok.text))
        self._turn = reply_turn + 1
        self.emit(self._updated(reply_turn + 1))
        return False

    def _explain(self, index: int) -> bool | None:
        exps = self._by_index.get(index)
        if not exps:
            self.emit(ev.JobFailed("Explain", READ_ONLY_NOTE if self.preload else
                                   f"The recorded session has no explanation for token {index}."))
            return None
        self.emit(ev.ExplainStarted(index))
        text = exps[0].text
        for cut in (len(text) // 3, 2 * len(text) // 3):
            if self._sleep():
                return True
            self.emit(ev.ExplainDelta(index, text[:cut]))
        self.emit(ev.ExplainDone(index, exps))
        return False

    def _what_if(self, job: WhatIf) -> bool | None:
        """The recorded branch of exactly this request (tests, screenshots); anything else
        needs the models."""
        branch = next((b for b in reversed(self.session.steered)
                       if (b.index, b.edited_explanation, b.alpha, b.span) == (job.index, job.edited, job.alpha, job.span)),
                      None)
        if branch is None:
            self.emit(ev.JobFailed("WhatIf", READ_ONLY_NOTE if self.preload else
                                   f"The recorded session has no what-if branch for token {job.index}."))
            return None
        self.emit(WhatIfDone(branch))
        return False

    def _compare(self, job: Compare) -> bool | None:
        """A recorded comparison of that pair; otherwise cos(a, b) from the saved
        activations, and a note that explaining the difference needs the models."""
        rec = next((c for c in self.comparisons if (c.i, c.j) == (job.i, job.j)), None)
        if rec is None:
            if self.session.activations is None:
                self.emit(ev.JobFailed("Compare", READ_ONLY_NOTE))
                return None
            rec = compare_activations(self.session.activations, job.i, job.j,
                                      "Explaining a − b and b − a needs the models: press L to load them.")
        self.emit(CompareDone(rec))
        return False

    def _explain_all(self, indices: list[int]) -> bool | None:
        if self.preload:  # everything recorded is already shown; new tokens need models
            self.emit(ev.JobFailed("ExplainAll", READ_ONLY_NOTE))
            return None
        t0 = time.monotonic()
        total = len(indices)
        for done, index in enumerate(indices, 1):
            if self._sleep(done):
                return True
            exps = self._by_index.get(index)
            if exps:
                self.emit(ev.ExplainDone(index, exps))
            # The replay's ETA is deterministic (None) unless it is pacing itself.
            eta = (time.monotonic() - t0) / done * (total - done) if self.delay else None
            self.emit(ev.ExplainAllProgress(done, total, eta))
        return False
