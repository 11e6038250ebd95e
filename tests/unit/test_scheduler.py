"""The scheduler both workers share: priority, replacement by key, stale-explain cancel,
cancel dropping background work, and the typed kinds the job thread reports.

Deterministic: the Scheduler is driven by hand (take / finish), and the JobThread
tests block their handler on an Event instead of sleeping."""

from __future__ import annotations

import threading

from nla_tui.core import events as ev
from nla_tui.core.errors import NlaError
from nla_tui.core.runtime.scheduler import JobThread, Scheduler


def test_priority_chat_before_cursor_explain_before_background():
    s = Scheduler()
    s.submit(ev.ExplainAll([1, 2, 3]))
    s.submit(ev.Explain(5))
    s.submit(ev.Chat("hi"))
    s.submit(ev.SetConversation([]))
    order = []
    while s.depth:
        order.append(type(s.take()).__name__)
        s.finish()
    # equal priorities keep submission order (Chat before SetConversation)
    assert order == ["Chat", "SetConversation", "Explain", "ExplainAll"]


def test_a_newer_job_with_the_same_key_replaces_the_queued_one():
    s = Scheduler()
    s.submit(ev.Explain(1))
    s.submit(ev.ExplainAll([1, 2]))
    s.submit(ev.Explain(2))  # the cursor moved: only the newest cursor explain stays
    s.submit(ev.ExplainAll([3]))
    s.submit(ev.Chat("a"))
    s.submit(ev.Chat("b"))  # chats are never merged
    queued = s.queued()
    assert [(type(j).__name__, getattr(j, "index", getattr(j, "indices", getattr(j, "text", None))))
            for j in queued] == [("Chat", "a"), ("Chat", "b"), ("Explain", 2), ("ExplainAll", [3])]


def test_a_cursor_explain_for_another_token_cancels_the_running_stale_one():
    s = Scheduler()
    s.submit(ev.Explain(1))
    running = s.take()
    assert running.index == 1 and not s.cancel.is_set()
    s.submit(ev.Explain(1))  # same token again: the running one is still wanted
    assert not s.cancel.is_set()
    s.submit(ev.ExplainAll([4]))  # background work does not cancel the cursor explain
    assert not s.cancel.is_set()
    s.submit(ev.Explain(2))
    assert s.cancel.is_set()
    s.finish()
    nxt = s.take()
    assert nxt.index == 2 and not s.cancel.is_set()  # each job gets a fresh cancel flag


def test_cancel_stops_the_running_job_and_drops_queued_background_work():
    s = Scheduler()
    s.submit(ev.ExplainAll([1, 2]))
    s.take()
    s.submit(ev.ExplainAll([3]))
    s.submit(ev.Explain(7))
    s.submit(ev.Chat("hi"))
    depth = s.cancel_current()
    assert s.cancel.is_set()
    assert [type(j).__name__ for j in s.queued()] == ["Chat", "Explain"]
    assert depth == 3  # the cancelled job is still running until it reaches its check


def test_idle_only_when_nothing_is_queued_or_running():
    s = Scheduler()
    assert s.idle.is_set()
    s.submit(ev.Explain(1))
    assert not s.idle.is_set()
    s.take()
    assert s.finish() == 0 and s.idle.is_set()


class _Jobs(JobThread):
    def __init__(self, emit):
        super().__init__(emit)
        self.started, self.release = threading.Event(), threading.Event()
        self.handlers = {ev.ExplainAll: self._hold, ev.Explain: self._fail, ev.Chat: self._bug}

    def _hold(self, job):
        self.started.set()
        while not (self.release.is_set() or self.cancel.is_set()):
            self.cancel.wait(0.01)

    def _fail(self, job):
        raise NlaError(f"no explanation for {job.index}")

    def _bug(self, job):
        raise ZeroDivisionError("oops")


def test_job_thread_reports_typed_kinds_for_finish_cancel_and_failure():
    events: list[ev.Event] = []
    lock = threading.Lock()

    def emit(e):
        with lock:
            events.append(e)

    w = _Jobs(emit).start()
    try:
        w.submit(ev.ExplainAll([1]))
        assert w.started.wait(30)
        w.submit(ev.ExplainAll([2]))  # queued background work, dropped by the cancel
        w.submit(ev.Explain(3))
        w.cancel_current()
        assert w.wait_idle(30)
        w.submit(ev.Chat("x"))
        w.submit(ev.SetConversation([]))  # no handler registered
        assert w.wait_idle(30)
    finally:
        w.stop()
    ends = [(type(e).__name__, e.kind, getattr(e, "cancelled", None)) for e in events
            if isinstance(e, (ev.JobFinished, ev.JobFailed))]
    assert ends == [("JobFinished", ev.JobKind.EXPLAIN_ALL, True),
                    ("JobFailed", ev.JobKind.EXPLAIN, None),
                    ("JobFailed", ev.JobKind.CHAT, None),
                    ("JobFailed", ev.JobKind.SET_CONVERSATION, None)]
    failed = [e for e in events if isinstance(e, ev.JobFailed)]
    assert failed[0].message == "no explanation for 3"
    assert "Internal error (ZeroDivisionError" in failed[1].message
    assert "cannot run SetConversation" in failed[2].message
    assert isinstance(events[-1], ev.QueueDepth) and events[-1].depth == 0


def test_engine_worker_reports_gpu_memory_per_card_after_every_job():
    from nla_tui.core.runtime.worker import EngineWorker
    from nla_tui.core.types import CardMemory, ModelInfo

    class TwoCardEngine:
        """What the worker reads from an Engine placed on two cards (no CUDA here)."""

        info = ModelInfo(preset=None, subject="s", av="a", ar="r", layer=1, quant="nf4", device="cuda",
                         d_model=8)
        tokens: list = []
        reads = 0

        def gpu_memory(self):
            self.reads += 1
            return [CardMemory(0, self.reads << 30, 80 << 30), CardMemory(1, 2 << 30, 80 << 30)]

    events: list[ev.Event] = []
    w = EngineWorker(TwoCardEngine(), events.append).start()
    try:
        assert w.wait_idle(30)
        w.submit(ev.Explain(0))  # fails (a stand-in cannot explain): memory is still reported
        assert w.wait_idle(30)
    finally:
        w.stop()
    reports = [e.cards for e in events if isinstance(e, ev.GpuMemory)]
    assert [[(c.index, c.used >> 30) for c in cards] for cards in reports] == [[(0, 1), (1, 2)], [(0, 2), (1, 2)]]
