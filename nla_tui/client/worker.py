"""The TUI's worker when it runs against `nla-tui serve` (`nla-tui --server URL`).

It takes the same jobs (core/events.py, core/steer_jobs.py) through the same scheduler
(runtime/scheduler.py: priorities, replacement, the stale-explain cancel, Esc) as the
EngineWorker, and answers with the same events, so the UI does not know the difference.
Each job is one or a few HTTP requests; the conversation lives on the server under a
handle, and its activations come back with it so sessions are saved locally as always.
Cancelling (Esc, a stale explain) cancels the request on the server by its id.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from dataclasses import replace
from typing import Any, Callable

from ..core import events as ev
from ..core.captured import Conversation
from ..core.errors import Cancelled, NlaError
from ..core.pair_jobs import ExplainWithPair
from ..core.runtime.scheduler import JobThread
from ..core.steer_jobs import Compare, CompareDone, Steer, SteerDone
from ..core.types import Explanation, group_by_index
from .branch_worker import RemoteBranches
from .http import NlaClient, ServerError

POSITIONS_PER_REQUEST = 64  # the server's cap (core/api.py MAX_POSITIONS)
CANCEL_POLL_S = 0.1


class RemoteWorker(RemoteBranches, JobThread):
    thread_name = "nla-remote"

    def __init__(self, url: str, token: str | None, emit: Callable[[ev.Event], None], autoload: bool = True):
        super().__init__(emit)
        self.url, self.token = url, token
        self.client_id = uuid.uuid4().hex  # every request of this TUI counts as one client's (rate limit)
        self.client = NlaClient(url, token, client_id=self.client_id)  # used by the worker thread only
        self.conversation: Conversation | None = None
        self.activations = None  # the conversation's, fetched with it (the cursor's sentence scores use them)
        self.explanations: dict[int, list[Explanation]] = {}  # the shown branch's (client/branch_worker.py)
        self.tree, self.handles = None, {}
        self.ready = threading.Event()
        self.handlers = {ev.LoadModels: self._load, ev.Chat: self._chat, ev.SetConversation: self._set_conversation,
                         ev.Explain: self._explain, ev.ExplainAll: self._explain_all, Steer: self._steer,
                         Compare: self._compare, ev.CheckFidelity: self._refuse_check_fidelity,
                         ExplainWithPair: self._refuse_extra_pair, **self._branch_handlers()}
        if autoload:
            self.submit(ev.LoadModels())

    # ------------------------------------------------------------ requests

    @contextlib.contextmanager
    def _scoped(self):
        """A client for one request, named by a fresh X-Request-Id. While it is out, a watcher
        turns this job's cancel (Esc, a stale explain) into DELETE /v1/requests/{id} on the
        worker's own connection: the server cancels the job even when nothing is streaming
        yet (queued behind other clients), and the request then ends with Cancelled."""
        rid = uuid.uuid4().hex
        own = NlaClient(self.url, self.token, request_id=rid, client_id=self.client_id)
        cancel, over = self.cancel, threading.Event()

        def watch() -> None:
            while not over.is_set():
                if cancel.wait(CANCEL_POLL_S):
                    with contextlib.suppress(Exception):  # best effort: the request may be over
                        self.client.cancel_request(rid)
                    return
        watcher = threading.Thread(target=watch, name="nla-remote-cancel", daemon=True)
        watcher.start()
        try:
            yield own
        finally:
            over.set()
            own.close()

    def _blocking(self, call: Callable[[NlaClient], Any]) -> Any:
        """One request that answers at the end, on its own thread, so the worker can stop
        waiting the moment the job is cancelled."""
        box: dict[str, Any] = {}
        with self._scoped() as own:
            def run() -> None:
                try:
                    box["result"] = call(own)
                except BaseException as e:  # handed to the worker thread below
                    box["error"] = e
            thread = threading.Thread(target=run, name="nla-remote-request", daemon=True)
            thread.start()
            while thread.is_alive():
                thread.join(CANCEL_POLL_S)
                if self.cancel.is_set():
                    raise Cancelled()
        if "error" in box:
            raise box["error"]
        return box["result"]

    def _streamed(self, open_stream: Callable[[NlaClient], Any]):
        """Iterate a stream on its own client, stopping as soon as the job is cancelled."""
        with self._scoped() as own:
            items = open_stream(own)
            try:
                for item in items:
                    if self.cancel.is_set():
                        raise Cancelled()
                    yield item
            finally:
                items.close()

    def _handle(self) -> str:
        if self.conversation is None:
            raise ServerError("There is no conversation yet: chat or open a transcript first.")
        return self.conversation.handle

    def _recaptured(self, call: Callable[[], Any]) -> Any:
        """Run `call`; if the server dropped our conversation (404: restarted, or its memory
        budget), capture it again once and retry."""
        try:
            return call()
        except ServerError as e:
            if e.status != 404 or self.conversation is None:
                raise
        self.conversation = self._blocking(lambda c: c.capture(self.conversation.messages))
        if self.tree is not None:
            self.handles[self.tree.current] = self.conversation
        return call()

    # ------------------------------------------------------------ jobs

    def _load(self, job: ev.LoadModels) -> None:
        info = self._blocking(lambda c: c.info)
        self.ready.set()
        self.emit(ev.ModelsReady(info))

    def _updated(self, conversation: Conversation, new_tree: bool = False) -> None:
        activations = self._blocking(lambda c: c.activations(conversation))
        self._record(conversation, activations, new_tree)  # the shown branch (a new tree for SetConversation)
        self.emit(ev.ConversationUpdated(list(conversation.messages), list(conversation.tokens), activations))

    def _set_conversation(self, job: ev.SetConversation) -> None:
        self._updated(self._blocking(lambda c: c.capture(job.messages)), new_tree=True)

    def _chat(self, job: ev.Chat) -> None:
        def stream():
            return self._streamed(lambda c: c.chat_stream(self.conversation, job.text, job.max_new_tokens))
        after = None
        for item in self._recaptured(lambda: list_until_done(stream(), self.emit)):
            after = item
        if after is not None:
            self._updated(after)

    def _cached(self, index: int, job: Any) -> list[Explanation] | None:
        same = [e for e in self.explanations.get(index, []) if e.sampling == job.sampling and e.prompt == job.prompt]
        return same or None

    def _keep(self, exps: list[Explanation]) -> None:
        group_by_index(exps, into=self.explanations, newest_first=True)

    def _with_sentences(self, exp: Explanation) -> Explanation:
        """The cursor's explanation with its per-sentence fidelity (POST /v1/sentences: one AR
        pass on the server, as the local worker does), kept for the next time it is shown."""
        if exp.sentences is not None or exp.score is None or self.activations is None \
                or not 0 <= exp.index < len(self.activations):
            return exp
        vector = self.activations[exp.index]
        try:
            new = replace(exp, sentences=self._blocking(lambda c: c.sentence_scores(exp.text, vector)))
        except ServerError:  # a server without /v1/sentences (an older nla-tui): shown unshaded
            return exp
        held = self.explanations.get(exp.index, [])
        self.explanations[exp.index] = [new if e is exp else e for e in held]
        return new

    def _explain(self, job: ev.Explain) -> None:
        # The logit lens first (POST /v1/lens), so it is on screen before the AV's first word.
        try:
            lens = self._recaptured(lambda: self._blocking(lambda c: c.logit_lens(self._handle(), job.index)))
        except ServerError:  # a server without /v1/lens (an older nla-tui): the explanation goes on without it
            lens = None
        if lens is not None:
            self.emit(ev.LogitLens(job.index, lens))
        if not job.force and job.samples == 1:
            hit = self._cached(job.index, job)
            if hit:
                self.emit(ev.ExplainDone(job.index, [self._with_sentences(hit[0])], cached=True))
                return
        self.emit(ev.ExplainStarted(job.index))
        drawn: list[Explanation] = []
        temperature = job.sampling.temperature if job.samples == 1 or job.sampling.temperature > 0 else 1.0
        for k in range(job.samples):  # several samples: seeds seed, seed+1, …, ranked by fidelity
            sampling = replace(job.sampling, temperature=temperature, seed=job.sampling.seed + k)
            stream = lambda: self._streamed(  # noqa: E731
                lambda c: c.explain_stream(self._handle(), [job.index], sampling, job.prompt))
            self._recaptured(lambda: drawn.extend(explanations_of(stream(), self.emit)))
        drawn.sort(key=lambda e: -(e.score.fidelity if e.score else -9))
        if drawn and not self.cancel.is_set():
            self._keep(drawn)
            self.emit(ev.ExplainDone(job.index, [self._with_sentences(drawn[0])] + drawn[1:]))

    def _explain_all(self, job: ev.ExplainAll) -> None:
        todo = [i for i in job.indices if not self._cached(i, job)]
        total, start, done = len(job.indices), time.monotonic(), len(job.indices) - len(todo)
        self.emit(ev.ExplainAllProgress(done, total, None))
        for k in range(0, len(todo), POSITIONS_PER_REQUEST):
            chunk = todo[k:k + POSITIONS_PER_REQUEST]
            stream = lambda: self._streamed(  # noqa: E731
                lambda c: c.explain_stream(self._handle(), chunk, job.sampling, job.prompt))

            def run_chunk() -> None:  # a 404 comes before any row, so a retry repeats nothing
                nonlocal done
                for e in explanations_of(stream(), None):
                    self._keep([e])
                    self.emit(ev.ExplainDone(e.index, [e]))
                    done += 1
                    rate = (done - (total - len(todo))) / max(time.monotonic() - start, 1e-6)
                    self.emit(ev.ExplainAllProgress(done, total, (total - done) / rate if rate else None))
            self._recaptured(run_chunk)

    def _steer(self, job: Steer) -> None:
        result = self._recaptured(lambda: self._blocking(lambda c: c.steer(
            self._handle(), job.index, job.edited, job.alpha, job.span, job.max_new_tokens, job.original,
            job.sampling, job.source)))  # a file / SAE source is refused there: the server reads no client file
        self.emit(SteerDone(result))

    def _compare(self, job: Compare) -> None:
        self.emit(CompareDone(self._recaptured(lambda: self._blocking(
            lambda c: c.compare(self._handle(), job.i, job.j, job.sampling)))))

    # The two jobs the server has no route for: one line that says where they run.

    def _refuse_check_fidelity(self, job: ev.CheckFidelity) -> None:
        raise NlaError("The fidelity self-check runs where the models are: run `nla-tui check --fidelity` on the "
                       "server's machine, or the TUI without --server.")

    def _refuse_extra_pair(self, job: ExplainWithPair) -> None:
        raise NlaError("An extra pair is not served over --server: run the TUI without --server, with "
                       "--extra-pair av=DIR,ar=DIR.")


def list_until_done(items, emit: Callable[[ev.Event], None]) -> list[Conversation]:
    """Chat stream: ChatStarted / ChatDelta go out as they come; the new Conversation is kept."""
    out = []
    for item in items:
        if isinstance(item, Conversation):
            out.append(item)
        else:
            emit(item)
    return out


def explanations_of(items, emit: Callable[[ev.Event], None] | None):
    """Explain stream: text so far goes out as ExplainDelta (if emit), finished explanations are yielded."""
    for item in items:
        if isinstance(item, Explanation):
            yield item
        elif emit is not None:
            emit(item)
