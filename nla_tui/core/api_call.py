"""One API request as a scheduler job (core/api.py submits them), and the checks every
request passes before it is queued."""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from . import events as ev
from .captured import Messages
from .errors import Cancelled, InputError
from .store.transcript import parse_message
from .types import Message, Sampling

log = logging.getLogger(__name__)
_scope = threading.local()  # the CallScope active on this thread, if any


class CallScope:
    """What the blocking API calls made on one thread started, so that another thread can
    stop it all: the MCP tools run blocking Nla / NlaClient methods in a worker thread, and
    when the agent cancels the tool call the event loop cancels this scope, which cancels
    the server's jobs (a queued one is dropped, a running one stops at its next step)
    instead of leaving them to run for nobody."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stops: list[Callable[[], None]] = []
        self.cancelled = False

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Within this block, calls made on this thread register with the scope."""
        previous = getattr(_scope, "current", None)
        _scope.current = self
        try:
            yield
        finally:
            _scope.current = previous

    def add(self, stop: Callable[[], None]) -> None:
        """Run `stop` when the scope is cancelled (now, if it already is)."""
        with self._lock:
            if not self.cancelled:
                self._stops.append(stop)
                return
        stop()

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            stops, self._stops = self._stops, []
        for stop in stops:
            try:
                stop()
            except Exception:  # one failed stop (a server gone) does not keep the others running
                log.exception("stopping a cancelled API call failed")


def current_scope() -> CallScope | None:
    return getattr(_scope, "current", None)


@dataclass(eq=False)
class Call(ev.Job):
    """One API request as a scheduler job: `work(engine, cancel)` runs on the worker thread."""

    work: Callable[[Any, threading.Event], Any]
    job_kind: ev.JobKind
    level: int = ev.PRIORITY_EXPLAIN
    result: Any = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    batch: Any = None  # an explain request's rows (api_batch.ExplainRows): may share an AV pass
    _group: Any = None  # set while running in a shared pass (api_batch.Group)
    _callbacks: list[Callable[[], None]] = field(default_factory=list)
    _scheduler: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def kind(self) -> ev.JobKind:  # type: ignore[override]  # per call, not per class
        return self.job_kind

    @property
    def key(self) -> str:
        return f"api:{id(self)}"  # never deduplicated: every request is its own job

    @property
    def priority(self) -> int:
        return self.level

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        with self._lock:
            if self.done.is_set():
                return
            self.result, self.error = result, error
            self.done.set()
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            try:
                fn()
            except Exception:  # a listener's failure (e.g. a server shutting down) is not the job's
                log.exception("a callback of a finished API call failed")

    def on_done(self, fn: Callable[[], None]) -> None:
        """Call `fn()` (on whichever thread finishes the job) once it is over."""
        with self._lock:
            if not self.done.is_set():
                self._callbacks.append(fn)
                return
        fn()

    def cancel(self) -> None:
        """Stop this job at its next check if running; drop it if still queued."""
        if self._group is not None:  # running in a shared pass: leave it (the last one out stops it)
            self._group.drop(self)
            return
        if self._scheduler is not None and self._scheduler.withdraw(self):
            self.finish(error=Cancelled())

    def outcome(self) -> Any:
        """The result of a finished call; raises its error."""
        if self.error is not None:
            raise self.error
        return self.result

    def wait(self) -> Any:
        try:
            self.done.wait()
        except KeyboardInterrupt:  # Ctrl-C in a notebook: stop the model too
            self.cancel()
            raise
        return self.outcome()


def as_messages(messages: Messages) -> list[Message]:
    """A prompt string (one user turn), Message objects, OpenAI-style dicts or {"messages": [...]}."""
    if isinstance(messages, str):
        if not messages.strip():
            raise InputError("The text is empty: give a prompt or a list of messages.")
        return [Message("user", messages)]
    if isinstance(messages, dict) and isinstance(messages.get("messages"), list):
        messages = messages["messages"]
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InputError("messages must be a non-empty list of {\"role\", \"content\"} objects or a prompt string.")
    return [m if isinstance(m, Message) else parse_message(m, i, "messages") for i, m in enumerate(messages)]


def check_sampling(sampling: Sampling) -> None:
    if not 1 <= sampling.max_new_tokens <= 1024:
        raise InputError(f"max_new_tokens {sampling.max_new_tokens} must be between 1 and 1024.")
    if not (math.isfinite(sampling.temperature) and sampling.temperature >= 0):
        raise InputError(f"temperature {sampling.temperature} must be a finite number ≥ 0 (0 = greedy).")
    if not 0 < sampling.top_p <= 1:
        raise InputError(f"top_p {sampling.top_p} must be in (0, 1].")
