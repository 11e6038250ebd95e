"""Explain requests of several clients in one AV pass (core/api.py's explain_call).

When an explain Call starts, greedy explain Calls with the same sampling and prompt that
are waiting in the scheduler's queue join it (Scheduler.take_also), up to the AV batch
that fits (engine.explain_batch_size): the AV's cost grows far slower than its batch
(BENCHMARKS.md), so eight clients explaining at once cost about one pass instead of
eight. Sampled requests (temperature > 0) run alone, so a seed gives the same text
whoever else is asking. Each member streams to its own sink and gets its own result;
a member whose client left is dropped (its rows' results discarded), and the pass stops
only when every member has left.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from . import events as ev
from .api_call import Call
from .errors import Cancelled
from .types import Explanation, Sampling


@dataclass(eq=False)
class ExplainRows:
    """One request's rows and where its output goes (a Call's `batch`)."""

    vectors: np.ndarray
    indices: list[int]
    sampling: Sampling
    prompt: str | None
    sink: Callable[[Any], None] | None
    out: list[Explanation] = field(default_factory=list)

    @property
    def key(self) -> tuple | None:
        """Requests with equal keys may share a pass; None: this one runs alone."""
        return None if self.sampling.temperature > 0 else (self.sampling, self.prompt)


class Group:
    """The Calls running in one pass; cancelling one drops it, the last one stops the pass."""

    def __init__(self, calls: list[Call], scheduler: Any):
        self.calls, self.scheduler = calls, scheduler
        self.left: set[int] = set()
        self.lock = threading.Lock()
        for c in calls:
            c._group = self

    def drop(self, call: Call) -> None:
        with self.lock:
            self.left.add(id(call))
            everyone_left = len(self.left) == len(self.calls)
        call.finish(error=Cancelled())
        if everyone_left:
            self.scheduler.withdraw(self.calls[0])  # the running job: stop the pass

    def active(self, call: Call) -> bool:
        return id(call) not in self.left


def run_batched(first: Call, engine: Any, cancel: threading.Event, scheduler: Any) -> list[Explanation]:
    """The work of an explain Call: its rows, plus the queued requests that can join them."""
    from .runtime.worker import _Throttle

    mine: ExplainRows = first.batch
    budget = max(len(mine.indices), engine.explain_batch_size(mine.sampling.max_new_tokens))
    room = [budget - len(mine.indices)]

    def joins(job: Any) -> bool:
        rows = getattr(job, "batch", None)
        if mine.key is None or rows is None or rows.key != mine.key or len(rows.indices) > room[0]:
            return False
        room[0] -= len(rows.indices)
        return True

    calls = [first] + scheduler.take_also(joins)
    group = Group(calls, scheduler)
    owners = [(c, k) for c in calls for k in range(len(c.batch.indices))]  # each row: (its Call, its row there)
    vectors = np.concatenate([c.batch.vectors for c in calls])
    throttles: dict[int, _Throttle] = defaultdict(_Throttle)
    step = engine.explain_batch_size(mine.sampling.max_new_tokens, rows=len(owners))
    try:
        for b in range(0, len(owners), step):
            if cancel.is_set():
                break
            # Rows are labelled by their place in the pass (two requests may name the same
            # position of different conversations); each result gets its request's index back.
            labels = list(range(b, min(b + step, len(owners))))

            def stream(row: int, text: str) -> None:
                call, k = owners[row]
                if call.batch.sink is not None and group.active(call) and throttles[row].ready():
                    call.batch.sink(ev.ExplainDelta(call.batch.indices[k], text))
            exps = engine.explain_vectors(vectors[b:b + step], mine.sampling, mine.prompt, stream, cancel, labels)
            for e in exps:
                call, k = owners[e.index]
                if group.active(call):
                    e = replace(e, index=call.batch.indices[k])
                    call.batch.out.append(e)
                    if call.batch.sink is not None:
                        call.batch.sink(e)
    except BaseException as e:
        for c in calls[1:]:
            c.finish(error=e)
        raise
    for c in calls[1:]:  # the first one finishes through the scheduler's handler
        if cancel.is_set():
            c.finish(error=Cancelled())
        else:
            c.finish(c.batch.out)
    return mine.out
