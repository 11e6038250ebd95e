"""One long-lived daemon thread that owns the engine (and so every model and CUDA).

Jobs wait in a priority queue (chat > explain under the cursor > explain-all); a
newer job with the same key replaces a queued one, and a new cursor explain cancels
a running stale one. Esc maps to cancel_current(). Results go out as typed events
through `emit`, which must be thread-safe (the TUI passes app.post_message).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
import traceback
from typing import Callable

from .. import events as ev
from ..errors import Cancelled, NlaError
from ..types import Explanation
from .steer_worker import SteerJobs

log = logging.getLogger(__name__)
STREAM_INTERVAL_S = 0.04  # batch streamed text: the UI re-renders at most ~25 times a second


class _Throttle:
    def __init__(self, interval: float = STREAM_INTERVAL_S):
        self.interval, self.last = interval, 0.0

    def ready(self) -> bool:
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            return True
        return False


class EngineWorker(SteerJobs):
    def __init__(self, engine_or_factory, emit: Callable[[ev.Event], None], autoload: bool = True):
        self._factory = engine_or_factory if callable(engine_or_factory) else (lambda: engine_or_factory)
        self.engine = None if callable(engine_or_factory) else engine_or_factory
        self.emit = emit
        self._queue: list[tuple[int, int, ev.Job]] = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._current: ev.Job | None = None
        self._cancel = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="nla-engine", daemon=True)
        self.ready = threading.Event()
        self.idle = threading.Event()
        if autoload:
            self.submit(ev.LoadModels())

    # ------------------------------------------------------------ control (any thread)

    def start(self) -> "EngineWorker":
        self._thread.start()
        return self

    def submit(self, job: ev.Job) -> None:
        with self._cv:
            self._queue = [q for q in self._queue if q[2].key != job.key]
            heapq.heapify(self._queue)
            cur = self._current
            if isinstance(job, ev.Explain) and isinstance(cur, ev.Explain) and cur.index != job.index:
                self._cancel.set()  # the cursor moved on: the running explain is stale
            heapq.heappush(self._queue, (job.priority, next(self._seq), job))
            self.idle.clear()
            self._cv.notify()
        self.emit(ev.QueueDepth(self.depth))

    def cancel_current(self) -> None:
        """Esc: stop the running job at the next decode step; drop queued background work."""
        with self._cv:
            self._cancel.set()
            self._queue = [q for q in self._queue if not isinstance(q[2], ev.ExplainAll)]
            heapq.heapify(self._queue)
        self.emit(ev.QueueDepth(self.depth))

    @property
    def depth(self) -> int:
        return len(self._queue) + (1 if self._current is not None else 0)

    def stop(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._stopping = True
            self._cancel.set()
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def wait_idle(self, timeout: float | None = None) -> bool:
        return self.idle.wait(timeout)

    # ------------------------------------------------------------ the thread

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._stopping:
                    self.idle.set()
                    self._cv.wait()
                if self._stopping:
                    return
                _, _, job = heapq.heappop(self._queue)
                self._current = job
                self._cancel = threading.Event()
            name = type(job).__name__
            try:
                getattr(self, f"_do_{name}")(job)
                self.emit(ev.JobFinished(name, cancelled=self._cancel.is_set()))
            except Cancelled:
                self.emit(ev.JobFinished(name, cancelled=True))
            except NlaError as e:
                self.emit(ev.JobFailed(name, str(e)))
            except Exception as e:  # a bug or OOM: report it, keep the worker alive
                log.error("job %s failed:\n%s", name, traceback.format_exc())
                self.emit(ev.JobFailed(name, _describe(e)))
            finally:
                with self._cv:
                    self._current = None
                    if not self._queue:
                        self.idle.set()
                self.emit(ev.QueueDepth(self.depth))

    def _engine(self):
        if self.engine is None or self.engine.info is None:
            raise NlaError("The models are not loaded (loading failed or has not finished); see the earlier error.")
        return self.engine

    def _do_LoadModels(self, job: ev.LoadModels) -> None:
        if self.engine is None:
            self.engine = self._factory()
        if self.engine.info is None:
            info = self.engine.load(lambda m, f, s: self.emit(ev.LoadProgress(m, f, s)))
        else:
            info = self.engine.info
        self.ready.set()
        self.emit(ev.ModelsReady(info))
        if self.engine.tokens:
            self.emit(ev.ConversationUpdated(list(self.engine.messages), list(self.engine.tokens),
                                             self.engine.activations))

    def _do_Chat(self, job: ev.Chat) -> None:
        eng = self._engine()
        self.emit(ev.ChatStarted(eng.prompt_tokens(job.text)))
        pending, thr = [], _Throttle()

        def on_delta(text: str) -> None:
            pending.append(text)
            if thr.ready():
                self.emit(ev.ChatDelta("".join(pending)))
                pending.clear()

        eng.chat(job.text, job.max_new_tokens, on_delta, self._cancel)
        if pending:
            self.emit(ev.ChatDelta("".join(pending)))
        self.emit(ev.ConversationUpdated(list(eng.messages), list(eng.tokens), eng.activations))

    def _do_SetConversation(self, job: ev.SetConversation) -> None:
        eng = self._engine()
        eng.set_conversation(job.messages)
        self.emit(ev.ConversationUpdated(list(eng.messages), list(eng.tokens), eng.activations))

    def _cached(self, index: int, job) -> list[Explanation] | None:
        have = self._engine().explanations.get(index, [])
        same = [e for e in have if e.sampling == job.sampling and e.prompt == job.prompt]
        return same or None

    def _do_Explain(self, job: ev.Explain) -> None:
        eng = self._engine()
        if not job.force and job.samples == 1:
            hit = self._cached(job.index, job)
            if hit:
                self.emit(ev.ExplainDone(job.index, hit[:1], cached=True))
                return
        self.emit(ev.ExplainStarted(job.index))
        if job.samples > 1:
            exps = eng.explain_samples(job.index, job.samples, job.sampling, job.prompt, self._cancel)
        else:
            thr = _Throttle()
            exps = eng.explain([job.index], job.sampling, job.prompt,
                               lambda i, t: thr.ready() and self.emit(ev.ExplainDelta(i, t)), self._cancel)
        if exps and not self._cancel.is_set():
            self.emit(ev.ExplainDone(job.index, exps))

    def _do_ExplainAll(self, job: ev.ExplainAll) -> None:
        eng = self._engine()
        todo = [i for i in job.indices if not self._cached(i, job)]
        total, start, done = len(job.indices), time.monotonic(), [len(job.indices) - len(todo)]
        self.emit(ev.ExplainAllProgress(done[0], total, None))

        def on_batch(exps: list[Explanation]) -> None:
            for e in exps:
                self.emit(ev.ExplainDone(e.index, [e]))
            done[0] += len(exps)
            rate = (done[0] - (total - len(todo))) / max(time.monotonic() - start, 1e-6)
            self.emit(ev.ExplainAllProgress(done[0], total, (total - done[0]) / rate if rate else None))

        eng.explain(todo, job.sampling, job.prompt, None, self._cancel, on_batch=on_batch)


def _describe(e: Exception) -> str:
    name = type(e).__name__
    if "OutOfMemory" in name:
        return ("Out of GPU memory. Cancel explain-all or lower its batch, use --quant nf4, or place the "
                "models on several GPUs with --devices.")
    return f"Internal error ({name}: {e}). The app keeps running; run with --debug for the traceback."
