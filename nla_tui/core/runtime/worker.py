"""One long-lived daemon thread that owns the engine (and so every model and CUDA).

Scheduling (chat > explain under the cursor > explain-all; replacement by key;
stale-explain cancel; Esc drops background work) is scheduler.py's, shared with the
ReplayWorker. Results go out as typed events through `emit`, which must be
thread-safe (the TUI passes app.post_message). After every job the worker reports
the GPU memory of each card holding a model (GpuMemory), so the UI never asks torch.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from .. import events as ev
from ..errors import NlaError
from ..types import Explanation
from ..branch_jobs import AdoptBranches, EditMessage, ExplainOnBranch, ListBranches, SwitchBranch
from ..pair_jobs import ExplainWithPair
from ..steer_jobs import Compare, Steer
from .branch_worker import BranchJobs
from .pair_worker import PairJobs
from .progress import RowProgress
from .scheduler import JobThread
from .steer_worker import SteerJobs

STREAM_INTERVAL_S = 0.04  # batch streamed chat text: its deltas are increments, none may be dropped


class _Throttle:
    def __init__(self, interval: float = STREAM_INTERVAL_S):
        self.interval, self.last = interval, 0.0

    def ready(self) -> bool:
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            return True
        return False


class EngineWorker(SteerJobs, BranchJobs, PairJobs, JobThread):
    thread_name = "nla-engine"

    def __init__(self, engine_or_factory, emit: Callable[[ev.Event], None], autoload: bool = True):
        super().__init__(emit)
        self._factory = engine_or_factory if callable(engine_or_factory) else (lambda: engine_or_factory)
        self.engine = None if callable(engine_or_factory) else engine_or_factory
        self.ready = threading.Event()
        self.handlers = {ev.LoadModels: self._load, ev.Chat: self._chat,
                         ev.SetConversation: self._set_conversation, ev.Explain: self._explain,
                         ev.ExplainAll: self._explain_all, Steer: self._do_Steer, Compare: self._do_Compare,
                         EditMessage: self._do_EditMessage, SwitchBranch: self._do_SwitchBranch,
                         ListBranches: self._do_ListBranches, ExplainOnBranch: self._do_ExplainOnBranch,
                         AdoptBranches: self._do_AdoptBranches, ExplainWithPair: self._do_ExplainWithPair}
        self.handlers[ev.CheckFidelity] = self._check_fidelity
        if autoload:
            self.submit(ev.LoadModels())

    def after_job(self) -> None:
        """GPU memory per card, read here on the worker thread (the UI imports no torch)."""
        if self.engine is not None and self.engine.info is not None:
            cards = self.engine.gpu_memory()
            if cards:
                self.emit(ev.GpuMemory(cards))

    def _engine(self):
        if self.engine is None or self.engine.info is None:
            raise NlaError("The models are not loaded (loading failed or has not finished); see the earlier error.")
        return self.engine

    def _load(self, job: ev.LoadModels) -> None:
        if self.engine is None:
            self.engine = self._factory()
        if self.engine.info is None:
            info = self.engine.load(lambda m, f, s: self.emit(ev.LoadProgress(m, f, s)))
        else:
            info = self.engine.info
        self.ready.set()
        self.emit(ev.ModelsReady(info))
        self._pair_ready(self.engine)
        if self.engine.tokens:
            self.emit(ev.ConversationUpdated(list(self.engine.messages), list(self.engine.tokens),
                                             self.engine.activations))

    def _check_fidelity(self, job: ev.CheckFidelity) -> None:
        from .fidelity_check import check_fidelity

        eng = self._engine()
        report, cached = check_fidelity(eng, recheck=job.recheck, cancel=self.cancel)
        self.emit(ev.FidelityChecked(report, cached, eng.info))

    def _chat(self, job: ev.Chat) -> None:
        eng = self._engine()
        self.emit(ev.ChatStarted(eng.prompt_tokens(job.text)))
        pending, thr = [], _Throttle()

        def on_delta(text: str) -> None:
            pending.append(text)
            if thr.ready():
                self.emit(ev.ChatDelta("".join(pending)))
                pending.clear()

        eng.chat(job.text, job.max_new_tokens, on_delta, self.cancel, self._capture_progress())
        if pending:
            self.emit(ev.ChatDelta("".join(pending)))
        self.emit(ev.ConversationUpdated(list(eng.messages), list(eng.tokens), eng.activations))

    def _set_conversation(self, job: ev.SetConversation) -> None:
        eng = self._engine()
        eng.set_conversation(job.messages, self._capture_progress(), self.cancel)
        self.emit(ev.ConversationUpdated(list(eng.messages), list(eng.tokens), eng.activations))

    def _capture_progress(self):
        """Chunk progress of a capture as CaptureProgress events (only when it takes
        several chunks: a short chat turn posts none)."""
        def report(done: int, total: int) -> None:
            if not (done == total and first[0]):
                self.emit(ev.CaptureProgress(done, total))
            first[0] = False
        first = [True]
        return report

    def _cached(self, index: int, job) -> list[Explanation] | None:
        have = self._engine().explanations.get(index, [])
        same = [e for e in have if e.sampling == job.sampling and e.prompt == job.prompt]
        return same or None

    def _explain(self, job: ev.Explain) -> None:
        eng = self._engine()
        # The logit lens first: one matmul, so it is on screen before the AV's first word.
        lens = eng.logit_lens(job.index)
        if lens is not None:
            self.emit(ev.LogitLens(job.index, lens))
        if not job.force and job.samples == 1:
            hit = self._cached(job.index, job)
            if hit:
                self.emit(ev.ExplainDone(job.index, [eng.with_sentence_fidelity(hit[0])], cached=True))
                return
        self.emit(ev.ExplainStarted(job.index))
        from ..nla.av import streaming_text  # here: this module stays torch-free until a job runs

        if job.samples > 1:
            exps = eng.explain_samples(job.index, job.samples, job.sampling, job.prompt, self.cancel)
        else:
            # Every step's text so far goes out; a receiver that cannot keep up drops the
            # older ones (the TUI: Textual's can_replace, ui/messages.py).
            exps = eng.explain([job.index], job.sampling, job.prompt,
                               lambda i, t: self.emit(ev.ExplainDelta(i, streaming_text(t))), self.cancel)
        if exps and not self.cancel.is_set():
            # The cursor's explanation gets its per-sentence fidelity (one more AR pass).
            self.emit(ev.ExplainDone(job.index, [eng.with_sentence_fidelity(exps[0])] + exps[1:]))

    def _explain_all(self, job: ev.ExplainAll) -> None:
        eng = self._engine()
        todo = [i for i in job.indices if not self._cached(i, job)]
        total = len(job.indices)
        progress = RowProgress(total, total - len(todo),
                               lambda p: self.emit(ev.ExplainAllProgress(p.done, total, p.eta_s)))
        self.emit(ev.ExplainAllProgress(progress.done, total, None))

        def on_batch(exps: list[Explanation]) -> None:
            for e in exps:
                self.emit(ev.ExplainDone(e.index, [e]))
            progress.batch_done(len(exps))

        with eng.counting_rows(progress.row_done):
            eng.explain(todo, job.sampling, job.prompt, None, self.cancel, on_batch=on_batch)
