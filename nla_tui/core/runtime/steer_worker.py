"""EngineWorker's handlers for steer and compare (core/steer_jobs.py), registered in
EngineWorker.handlers like the worker's own."""

from __future__ import annotations

import time

from ..events import ExplainDone
from ..steer_jobs import Compare, CompareDone, SteerProgress, Steer, SteerDone


class SteerJobs:
    """EngineWorker's handlers for the two jobs (registered by job type)."""

    def _do_Steer(self, job: Steer) -> None:
        from .steer import steer

        eng = self._engine()
        had = set(eng.explanations)
        result = steer(eng, job.index, job.edited, job.alpha, job.span, job.max_new_tokens, job.original,
                       job.sampling, self.cancel, source=job.source)
        if job.index not in had and job.index in eng.explanations:  # explained on the way: show it too
            self.emit(ExplainDone(job.index, eng.explanations[job.index]))
        self.emit(SteerDone(result))

    def _do_Compare(self, job: Compare) -> None:
        from .steer import compare

        what = f"compare {job.i}↔{job.j}: explaining a − b, b − a"
        start = time.monotonic()
        self.emit(SteerProgress(what, 0, 2 * job.sampling.max_new_tokens))

        def progress(done: int, total: int) -> None:
            # Per token written; a receiver keeps only the newest (the TUI: ui/messages.py).
            elapsed = time.monotonic() - start
            self.emit(SteerProgress(what, done, total, elapsed / done * (total - done) if done else None))

        self.emit(CompareDone(compare(self._engine(), job.i, job.j, job.sampling, self.cancel, progress)))
