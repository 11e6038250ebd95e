"""EngineWorker's handler for the extra pair's job (core/pair_jobs.py), registered in
EngineWorker.handlers like the worker's own."""

from __future__ import annotations

from ..pair_jobs import ExplainWithPair, PairExplainDelta, PairExplainDone, PairReady


class PairJobs:
    """EngineWorker's handler for ExplainWithPair, and the PairReady it sends after loading."""

    def _pair_ready(self, eng) -> None:
        if getattr(eng, "pair", None) is not None:
            self.emit(PairReady(eng.pair.info))

    def _do_ExplainWithPair(self, job: ExplainWithPair) -> None:
        eng = self._engine()
        eng.pair_named(job.pair)  # no such pair: a one-line error before anything runs
        eng._check_indices([job.index])
        if not job.force:
            have = [e for e in eng.pair_explanations.get(job.index, [])
                    if e.sampling == job.sampling and e.prompt == job.prompt]
            if have:
                self.emit(PairExplainDone(job.pair, job.index, have, cached=True))
                return
        from ..nla.av import streaming_text  # here: this module stays torch-free until a job runs

        self.emit(PairExplainDelta(job.pair, job.index, ""))
        exps = eng.explain_with_pair([job.index], job.sampling, job.prompt,
                                     lambda i, t: self.emit(PairExplainDelta(job.pair, i, streaming_text(t))),
                                     self.cancel, job.pair)
        if exps and not self.cancel.is_set():
            self.emit(PairExplainDone(job.pair, job.index, exps))
