"""The one job scheduler, shared by EngineWorker (real models) and ReplayWorker (a
saved session), so the UI tests run over the same scheduling as the app.

Rules (architecture: chat > the token under the cursor > background work):
- a lower `priority` runs first; equal priorities run in submission order;
- a queued job with the same `key` is replaced by the newer one (one cursor explain,
  one explain-all);
- a new cursor explain for another token cancels the running, now stale, explain;
- cancel (Esc) stops the running job at its next check and drops queued background work.

`JobThread` is the daemon thread around it: it takes jobs in that order, runs the
handler registered for the job's type and reports JobFinished / JobFailed with the
job's typed kind, then the queue depth.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import traceback
from typing import Callable

from .. import events as ev
from ..errors import Cancelled, NlaError

log = logging.getLogger(__name__)

Handler = Callable[[ev.Job], None]


class Scheduler:
    """A thread-safe priority queue of jobs plus the job running now."""

    def __init__(self) -> None:
        self._queue: list[tuple[int, int, ev.Job]] = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self.current: ev.Job | None = None
        self.cancel = threading.Event()  # the running job's; a fresh one per job
        self.idle = threading.Event()  # nothing queued and nothing running
        self.idle.set()
        self._stopping = False

    @property
    def depth(self) -> int:
        """Jobs queued plus the one running."""
        with self._cv:
            return len(self._queue) + (self.current is not None)

    def queued(self) -> list[ev.Job]:
        """The queued jobs in the order they will run."""
        with self._cv:
            return [job for _, _, job in sorted(self._queue)]

    def submit(self, job: ev.Job) -> int:
        """Queue `job` (replacing a queued one with its key); returns the depth."""
        with self._cv:
            self._queue = [q for q in self._queue if q[2].key != job.key]
            heapq.heapify(self._queue)
            cur = self.current
            if job.cursor_index is not None and cur is not None and cur.cursor_index is not None \
                    and cur.cursor_index != job.cursor_index:
                self.cancel.set()  # the cursor moved on: the running explain (either pair's) is stale
            heapq.heappush(self._queue, (job.priority, next(self._seq), job))
            self.idle.clear()
            self._cv.notify()
            return len(self._queue) + (self.current is not None)

    def cancel_current(self) -> int:
        """Esc: cancel the running job; drop queued background work. Returns the depth."""
        with self._cv:
            self.cancel.set()
            self._queue = [q for q in self._queue if q[2].priority < ev.PRIORITY_BACKGROUND]
            heapq.heapify(self._queue)
            return len(self._queue) + (self.current is not None)

    def withdraw(self, job: ev.Job) -> bool:
        """Cancel this one job (a server client went away): stop it at its next check if it
        is running, drop it if queued. Returns True if it was dropped before it ran."""
        with self._cv:
            if self.current is job:
                self.cancel.set()
                return False
            kept = [q for q in self._queue if q[2] is not job]
            dropped = len(kept) != len(self._queue)
            self._queue = kept
            heapq.heapify(self._queue)
            return dropped

    def take_also(self, match: Callable[[ev.Job], bool]) -> list[ev.Job]:
        """Queued jobs to run together with the current one (API explain requests batched
        into one AV pass), in the order they would have run; `match` is asked for each in
        that order and may stop accepting. They leave the queue: the caller finishes them."""
        with self._cv:
            taken = [job for _, _, job in sorted(self._queue) if match(job)]
            if taken:
                self._queue = [q for q in self._queue if not any(q[2] is job for job in taken)]
                heapq.heapify(self._queue)
            return taken

    def take(self) -> ev.Job | None:
        """Block until a job is due and make it the current one; None once stopped."""
        with self._cv:
            while not self._queue and not self._stopping:
                self.idle.set()
                self._cv.wait()
            if self._stopping:
                return None
            _, _, job = heapq.heappop(self._queue)
            self.current = job
            self.cancel = threading.Event()
            return job

    def finish(self) -> int:
        """The current job is over; returns the depth."""
        with self._cv:
            self.current = None
            if not self._queue:
                self.idle.set()
            return len(self._queue)

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self.cancel.set()
            self._cv.notify_all()


class JobThread:
    """Base of both workers: start(), submit(job), cancel_current(), stop(), wait_idle().
    Subclasses register one handler per job type in `handlers`; a handler raises
    NlaError for a failure the user should read, Cancelled when it stopped early."""

    thread_name = "nla-jobs"

    def __init__(self, emit: Callable[[ev.Event], None]) -> None:
        self.emit = emit
        self.scheduler = Scheduler()
        self.handlers: dict[type[ev.Job], Handler] = {}
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)

    # ------------------------------------------------------------ control (any thread)

    def start(self) -> "JobThread":
        self._thread.start()
        return self

    def submit(self, job: ev.Job) -> None:
        self.emit(ev.QueueDepth(self.scheduler.submit(job)))

    def cancel_current(self) -> None:
        self.emit(ev.QueueDepth(self.scheduler.cancel_current()))

    @property
    def depth(self) -> int:
        return self.scheduler.depth

    @property
    def idle(self) -> threading.Event:
        return self.scheduler.idle

    @property
    def cancel(self) -> threading.Event:
        """The running job's cancel flag (handlers pass it down to decode loops)."""
        return self.scheduler.cancel

    def stop(self, timeout: float = 5.0) -> None:
        self.scheduler.stop()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def wait_idle(self, timeout: float | None = None) -> bool:
        return self.scheduler.idle.wait(timeout)

    # ------------------------------------------------------------ the thread

    def _loop(self) -> None:
        while (job := self.scheduler.take()) is not None:
            kind = job.kind
            try:
                handler = self.handlers.get(type(job))
                if handler is None:
                    raise NlaError(f"This worker cannot run {kind.value} jobs.")
                handler(job)
                self.emit(ev.JobFinished(kind, cancelled=self.scheduler.cancel.is_set()))
            except Cancelled:
                self.emit(ev.JobFinished(kind, cancelled=True))
            except NlaError as e:
                self.emit(ev.JobFailed(kind, str(e)))
            except Exception as e:  # a bug or OOM: report it, keep the worker alive
                log.error("job %s failed:\n%s", kind.value, traceback.format_exc())
                self.emit(ev.JobFailed(kind, describe_failure(e)))
            finally:
                try:
                    self.after_job()
                except Exception:  # a report after the job must not stop the worker
                    log.exception("after %s", kind.value)
                self.emit(ev.QueueDepth(self.scheduler.finish()))

    def after_job(self) -> None:
        """Runs on the worker thread after every job (EngineWorker reports GPU memory)."""


def describe_failure(e: Exception) -> str:
    name = type(e).__name__
    if "OutOfMemory" in name:
        return ("Out of GPU memory. Cancel explain-all or lower its batch, use --quant nf4, or place the "
                "models on several GPUs with --devices.")
    return f"Internal error ({name}: {e}). The app keeps running; run with --debug for the traceback."
