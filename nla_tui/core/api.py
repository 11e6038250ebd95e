"""The in-process NLA API: load the models once, then tokenize, capture, explain, score,
compare and steer from any thread (a notebook, a script, the HTTP server, the MCP tools).

Every call is a job on the TUI's own scheduler (runtime/scheduler.py), run by an
EngineWorker's thread, so calls from many threads queue by priority (tokenize, capture
and score before explanations before long background work) and each can be cancelled on
its own (`Call.cancel()`: what the server does when a client disconnects; Ctrl-C in a
notebook does it too). Captured conversations are kept by handle (least recently used
dropped first beyond a byte budget), so explain / compare / steer name a handle instead
of re-sending activations. nla_tui.client.NlaClient has the same methods over HTTP.
"""

from __future__ import annotations

import queue
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from . import events as ev
from .steer_results import Comparison, SteerResult
from .branch_tree import BranchDiff, diff_conversations, edited_messages
from .api_call import Call, as_messages, check_sampling, current_scope
from .captured import Conversation, Messages, StreamItem
from .errors import Cancelled, InputError, NlaError
from .options import EngineOptions
from .steer_jobs import DEFAULT_ALPHA
from .steer_sources import VectorSource
from .types import Candidate, Explanation, Message, ModelInfo, Sampling, Score, SentenceScore, TokenInfo

MAX_POSITIONS = 64  # positions (or raw vectors) one explain call may name
MAX_HELD_BYTES = 1 << 30  # activations of captured conversations kept for later calls
DEFAULT_STEER_TOKENS = 32

class UnknownHandle(InputError):
    """A conversation handle this process does not hold (never captured, or dropped)."""


@dataclass
class _Held:
    messages: list[Message]
    tokens: list[TokenInfo]
    activations: np.ndarray


class Nla:
    """Subject + AV + AR loaded once; every method is safe to call from any thread.

    >>> nla = Nla.load(preset="demo")                      # doctest: +SKIP
    >>> conv = nla.capture("What is the capital of France?")  # doctest: +SKIP
    >>> [e.text for e in nla.explain(conv, [5])]           # doctest: +SKIP
    """

    def __init__(self, engine: Any, max_held_bytes: int = MAX_HELD_BYTES):
        """Wrap an Engine that is already loaded (Nla.load builds and loads one)."""
        from .runtime.worker import EngineWorker

        if engine.info is None:
            raise InputError("The engine is not loaded: call engine.load() first, or use Nla.load(...).")
        self.info: ModelInfo = engine.info
        # The extra AV/AR pair (Nla.load(..., extra_pair=PairSpec(av, ar, label))), or None.
        self.pair = engine.pair.info if getattr(engine, "pair", None) is not None else None
        self.max_held_bytes = max_held_bytes
        self._held: OrderedDict[str, _Held] = OrderedDict()
        self._held_lock = threading.Lock()
        self.jobs = {"finished": 0, "cancelled": 0, "failed": 0}
        self._worker = EngineWorker(engine, self._on_event, autoload=False)
        self._worker.handlers[Call] = self._run
        self._worker.start()

    @classmethod
    def load(cls, options: EngineOptions | None = None, progress: Callable[[str, float, str], None] | None = None,
             **kw: Any) -> "Nla":
        """Load subject, AV and AR: `Nla.load(preset="demo")`, or any EngineOptions field
        (subject, av, ar, layer, quant, device, devices, ...); `progress(model, fraction, message)`."""
        from .runtime.engine import Engine

        engine = Engine(options or EngineOptions(**kw))
        engine.load(progress)
        return cls(engine)

    def close(self) -> None:
        """Stop the worker thread (the models stay in memory until the Nla is dropped)."""
        self._worker.stop()

    # ------------------------------------------------------------ jobs

    def _on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.JobFinished):
            self.jobs["cancelled" if event.cancelled else "finished"] += 1
        elif isinstance(event, ev.JobFailed):
            self.jobs["failed"] += 1

    def _run(self, call: Call) -> None:
        """The worker's handler for every Call; errors go to the caller and to the scheduler."""
        cancel = self._worker.cancel
        try:
            result = call.work(self._worker.engine, cancel)
            if cancel.is_set():
                raise Cancelled()
            call.finish(result)
        except BaseException as e:
            call.finish(error=e)
            raise

    def submit(self, work: Callable[[Any, threading.Event], Any], kind: ev.JobKind,
               priority: int = ev.PRIORITY_EXPLAIN) -> Call:
        """Queue `work(engine, cancel)` on the scheduler; returns the Call (wait(), cancel())."""
        return self._enqueue(Call(work, kind, priority))

    def _enqueue(self, call: Call) -> Call:
        call._scheduler = self._worker.scheduler
        self._worker.submit(call)
        scope = current_scope()  # a caller that may be cancelled from another thread (the MCP tools)
        if scope is not None:
            scope.add(lambda: None if call.done.is_set() else call.cancel())
        return call

    def status(self) -> dict[str, Any]:
        with self._held_lock:
            held, held_bytes = len(self._held), sum(h.activations.nbytes for h in self._held.values())
        return {"queue_depth": self._worker.depth, "jobs": dict(self.jobs), "conversations_held": held,
                "held_bytes": held_bytes, "max_held_bytes": self.max_held_bytes}

    # ------------------------------------------------------------ conversations

    def _hold(self, held: _Held) -> str:
        handle = secrets.token_hex(8)
        with self._held_lock:
            self._held[handle] = held
            while len(self._held) > 1 and sum(h.activations.nbytes for h in self._held.values()) > self.max_held_bytes:
                self._held.popitem(last=False)
        return handle

    def held(self, conversation: Conversation | str) -> _Held:
        handle = conversation.handle if isinstance(conversation, Conversation) else str(conversation)
        with self._held_lock:
            h = self._held.get(handle)
            if h is None:
                raise UnknownHandle(f"No captured conversation has handle {handle!r} (never captured here, or "
                                    f"dropped to stay under {self.max_held_bytes >> 20} MiB): capture it again.")
            self._held.move_to_end(handle)
            return h

    def forget(self, conversation: Conversation | str) -> None:
        """Drop a captured conversation's activations now."""
        h = self.held(conversation)
        with self._held_lock:
            self._held = OrderedDict((k, v) for k, v in self._held.items() if v is not h)

    def _positions(self, held: _Held, positions: Sequence[int] | None) -> list[int]:
        n = len(held.tokens)
        chosen = list(range(n)) if positions is None else [int(p) for p in positions]
        bad = [p for p in chosen if not 0 <= p < n]
        if bad:
            raise InputError(f"Position {bad[0]} is out of range: the conversation has {n} tokens (0..{n - 1}).")
        return chosen

    def tokenize(self, messages: Messages) -> list[TokenInfo]:
        """The tokens the subject sees for these messages (roles, turns), without running it."""
        msgs = as_messages(messages)

        def work(engine: Any, cancel: threading.Event) -> list[TokenInfo]:
            ids, roles, turns = engine.subject.tokenize(msgs)
            return [TokenInfo(k, i, engine.subject.tok.decode([i]), roles[k], turns[k], 0.0, [])
                    for k, i in enumerate(ids)]
        return self.submit(work, ev.JobKind.SET_CONVERSATION, ev.PRIORITY_CHAT).wait()

    def capture_call(self, messages: Messages) -> tuple[Call, Callable[[], Conversation]]:
        """capture() as a Call, and how to turn its result into the Conversation (for the server)."""
        msgs = as_messages(messages)
        return self._conversation_call(lambda engine, cancel: engine.set_conversation(msgs, None, cancel),
                                       ev.JobKind.SET_CONVERSATION)

    def _conversation_call(self, work: Callable[[Any, threading.Event], Any],
                           kind: ev.JobKind) -> tuple[Call, Callable[[], Conversation]]:
        """`work(engine, cancel)` leaves the engine holding a conversation: as a Call, and how
        to turn its result into that Conversation under a new handle."""
        def run(engine: Any, cancel: threading.Event) -> _Held:
            work(engine, cancel)
            return _Held(list(engine.messages), list(engine.tokens), engine.activations)

        call = self.submit(run, kind, ev.PRIORITY_CHAT)

        def conversation() -> Conversation:
            held = call.outcome()
            return Conversation(self._hold(held), held.messages, held.tokens)
        return call, conversation

    @staticmethod
    def _give(engine: Any, held: _Held, cancel: threading.Event) -> None:
        """The engine holds `held`'s conversation (captured again unless it is the one held)."""
        if engine.messages != held.messages or len(engine.tokens) != len(held.tokens):
            engine.set_conversation(held.messages, None, cancel)

    def capture(self, messages: Messages) -> Conversation:
        """Teacher-force the messages through the subject and keep every token's layer-K
        activation under the returned handle. A string is one user turn."""
        call, conversation = self.capture_call(messages)
        call.wait()
        return conversation()

    def activations(self, conversation: Conversation | str, positions: Sequence[int] | None = None) -> np.ndarray:
        """The layer-K activations (float32, [len(positions), d_model]) of a captured conversation."""
        held = self.held(conversation)
        return held.activations[self._positions(held, positions)].copy()

    # ------------------------------------------------------------ explain and score

    def explain_call(self, vectors: np.ndarray, indices: list[int], sampling: Sampling, prompt: str | None,
                     sink: Callable[[StreamItem], None] | None) -> Call:
        """AV + AR for rows of `vectors` as one Call; `sink` gets ExplainDelta (text so far,
        throttled) and each finished Explanation, on the worker thread. Greedy requests
        waiting at the same time share the AV pass (api_batch.py)."""
        from .api_batch import ExplainRows, run_batched

        check_sampling(sampling)
        if not 1 <= len(indices) <= MAX_POSITIONS:
            raise InputError(f"Explain 1 to {MAX_POSITIONS} positions or vectors a call (got {len(indices)}); "
                             f"split the request.")
        level = ev.PRIORITY_EXPLAIN if len(indices) <= 16 else ev.PRIORITY_BACKGROUND
        call = Call(lambda engine, cancel: run_batched(call, engine, cancel, self._worker.scheduler),
                    ev.JobKind.EXPLAIN, level, batch=ExplainRows(vectors, list(indices), sampling, prompt, sink))
        return self._enqueue(call)

    def vectors_to_explain(self, conversation: Conversation | str | None, positions: Sequence[int] | None,
                           vectors: Any) -> tuple[np.ndarray, list[int]]:
        """Rows to explain: positions of a captured conversation, or raw vectors (row numbers as indices)."""
        if conversation is not None:
            held = self.held(conversation)
            chosen = self._positions(held, positions)
            return held.activations[chosen], chosen
        arr = self.check_vectors(vectors)
        return arr, list(range(len(arr)))

    def check_vectors(self, vectors: Any) -> np.ndarray:
        try:
            arr = np.asarray(vectors, dtype=np.float32)
        except (TypeError, ValueError):
            raise InputError("vectors must be numbers: one row of d_model floats per vector.") from None
        if arr.ndim == 1:
            arr = arr[None]
        d = self.info.d_model
        if arr.ndim != 2 or arr.shape[1] != d or len(arr) == 0:
            raise InputError(f"Expected vectors of d_model={d} floats (shape [n, {d}]); got shape {list(arr.shape)}.")
        if not np.isfinite(arr).all():
            raise InputError("A vector holds NaN or Inf: give finite numbers.")
        return arr

    def explain(self, conversation: Conversation | str, positions: Sequence[int],
                sampling: Sampling = Sampling(), prompt: str | None = None,
                on_text: Callable[[int, str], None] | None = None) -> list[Explanation]:
        """Explain tokens of a captured conversation (AV, then AR-scored); `on_text(position,
        text_so_far)` streams."""
        return self._explain_blocking(*self.vectors_to_explain(conversation, positions, None), sampling, prompt, on_text)

    def explain_with_pair(self, conversation: Conversation | str, positions: Sequence[int],
                          sampling: Sampling = Sampling(), prompt: str | None = None,
                          pair: str = "extra") -> list[Explanation]:
        """Explain tokens of a captured conversation with the extra pair (loaded with
        `extra_pair=PairSpec(av_dir, ar_dir, label)`): its AV reads the subject's residual at its
        own layer, its AR scores; the one explain path, so the text is what that pair gives alone."""
        check_sampling(sampling)
        held = self.held(conversation)
        chosen = self._positions(held, positions)
        if not 1 <= len(chosen) <= MAX_POSITIONS:
            raise InputError(f"Explain 1 to {MAX_POSITIONS} positions a call (got {len(chosen)}); split the request.")

        def work(engine: Any, cancel: threading.Event) -> list[Explanation]:
            engine.pair_named(pair)  # no such pair: a one-line error naming --extra-pair
            self._give(engine, held, cancel)
            return engine.explain_with_pair(chosen, sampling, prompt, None, cancel, pair)

        return self.submit(work, ev.JobKind.EXPLAIN_PAIR).wait()

    def explain_vectors(self, vectors: Any, sampling: Sampling = Sampling(), prompt: str | None = None,
                        on_text: Callable[[int, str], None] | None = None) -> list[Explanation]:
        """Explain raw vectors ([n, d_model]: an SAE direction, a steering vector, ...); each
        Explanation's index is its row."""
        return self._explain_blocking(*self.vectors_to_explain(None, None, vectors), sampling, prompt, on_text)

    def _explain_blocking(self, vectors: np.ndarray, indices: list[int], sampling: Sampling, prompt: str | None,
                          on_text: Callable[[int, str], None] | None) -> list[Explanation]:
        """explain / explain_vectors: the call, its text deltas to on_text, waited for."""
        sink = None if on_text is None else (lambda it: isinstance(it, ev.ExplainDelta) and on_text(it.index, it.text))
        return self.explain_call(vectors, indices, sampling, prompt, sink).wait()

    def explain_stream(self, conversation: Conversation | str | None = None, positions: Sequence[int] | None = None,
                       sampling: Sampling = Sampling(), prompt: str | None = None,
                       vectors: Any = None) -> Iterator[StreamItem]:
        """Yields ExplainDelta (text so far) and finished Explanations as they come; leaving
        the loop early cancels the job."""
        arr, indices = self.vectors_to_explain(conversation, positions, vectors)
        items: queue.Queue = queue.Queue()
        call = self.explain_call(arr, indices, sampling, prompt, items.put)
        call.on_done(lambda: items.put(None))
        try:
            while (item := items.get()) is not None:
                yield item
            call.outcome()
        finally:
            if not call.done.is_set():
                call.cancel()

    def _text_and_vector(self, text: str, vector: Any) -> np.ndarray:
        """score / sentence_scores: a non-empty text and one vector of d_model floats."""
        if not isinstance(text, str) or not text.strip():
            raise InputError("The text to score is empty: give the explanation text to read back into a vector.")
        vec = self.check_vectors(vector)
        if len(vec) != 1:
            raise InputError(f"Score one vector at a time (got {len(vec)}).")
        return vec

    def score_call(self, text: str, vector: Any) -> Call:
        vec = self._text_and_vector(text, vector)
        return self.submit(lambda engine, cancel: engine.score(text, vec[0]), ev.JobKind.EXPLAIN, ev.PRIORITY_CHAT)

    def score(self, text: str, vector: Any) -> Score:
        """How well the AR reads `text` back into `vector` (cos, mse_nrm, fve_nrm)."""
        return self.score_call(text, vector).wait()

    def check_fidelity(self, recheck: bool = False, positions: int | None = None) -> Any:
        """The quantisation self-check (docs/FIDELITY.md): a FidelityReport for the models as they
        run against the reference precision; cached per models and precisions unless `recheck`."""
        from .runtime.fidelity_check import check_fidelity

        def work(engine: Any, cancel: threading.Event) -> Any:
            return check_fidelity(engine, with_open=False, recheck=recheck, positions=positions, cancel=cancel)[0]
        return self.submit(work, ev.JobKind.CHECK_FIDELITY, ev.PRIORITY_BACKGROUND).wait()

    def sentences_call(self, text: str, vector: Any) -> Call:
        vec = self._text_and_vector(text, vector)

        def work(engine: Any, cancel: threading.Event) -> list[SentenceScore] | None:
            from .nla.sentences import sentence_scores  # the AR's code: loaded with the models

            return sentence_scores(engine.ar, text, vec[0])
        return self.submit(work, ev.JobKind.EXPLAIN, ev.PRIORITY_CHAT)

    def sentence_scores(self, text: str, vector: Any) -> list[SentenceScore] | None:
        """Each sentence of `text` scored against `vector` alone and left out (one AR pass;
        what the TUI's pane shows under an explanation); None for fewer than two sentences."""
        return self.sentences_call(text, vector).wait()

    def lens_call(self, conversation: Conversation | str, position: int) -> Call:
        held = self.held(conversation)
        self._positions(held, [position])
        return self.submit(self._on_conversation(held, lambda e, c: e.logit_lens(position)),
                           ev.JobKind.EXPLAIN, ev.PRIORITY_CHAT)

    def logit_lens(self, conversation: Conversation | str, position: int) -> list[list[Candidate]] | None:
        """The subject's own top-3 next tokens at `position`, read at every layer through the
        final norm and unembedding (layer 0 first); None when the conversation is over the
        lens's memory budget."""
        return self.lens_call(conversation, position).wait()

    # ------------------------------------------------------------ compare and steer

    def _on_conversation(self, held: _Held, work: Callable[[Any, threading.Event], Any]):
        """Run `work` with the engine holding this conversation (steer and compare read it)."""
        def run(engine: Any, cancel: threading.Event) -> Any:
            self._give(engine, held, cancel)
            return work(engine, cancel)
        return run

    def chat_call(self, conversation: Conversation | str | None, text: str, max_new_tokens: int,
                  sink: Callable[[ev.Event], None]) -> tuple[Call, Callable[[], Conversation]]:
        """A user turn after a captured conversation (None: a new one), the reply streamed to
        `sink` (ChatStarted with the prompt's tokens, then ChatDelta), then the whole
        conversation captured under a new handle. What the attached TUI's Chat runs."""
        from .runtime.worker import _Throttle

        if not isinstance(text, str) or not text.strip():
            raise InputError("The prompt is empty: type something to send to the subject model.")
        if not 1 <= max_new_tokens <= 4096:
            raise InputError(f"max_new_tokens {max_new_tokens} must be between 1 and 4096.")
        held = None if conversation is None else self.held(conversation)

        def work(engine: Any, cancel: threading.Event) -> None:
            if held is None:  # a new conversation: the engine's own is not continued
                engine.messages, engine.tokens = [], []
            else:
                self._give(engine, held, cancel)
            sink(ev.ChatStarted(engine.prompt_tokens(text)))
            pending, throttle = [], _Throttle()

            def on_delta(piece: str) -> None:
                pending.append(piece)
                if throttle.ready():
                    sink(ev.ChatDelta("".join(pending)))
                    pending.clear()
            engine.chat(text, max_new_tokens, on_delta, cancel)
            if pending:
                sink(ev.ChatDelta("".join(pending)))

        return self._conversation_call(work, ev.JobKind.CHAT)

    def edit_call(self, conversation: Conversation | str, message: int, text: str) -> tuple[Call, Callable[[], Conversation]]:
        """edit() as a Call, and how to turn its result into the Conversation (for the server)."""
        held = self.held(conversation)
        edited_messages(held.messages, message, text)  # refused here, before the job is queued

        return self._conversation_call(self._on_conversation(held, lambda e, c: e.edit_message(message, text, cancel=c)),
                                       ev.JobKind.EDIT_MESSAGE)

    def edit(self, conversation: Conversation | str, message: int, text: str) -> Conversation:
        """The conversation with message `message` replaced by `text`, captured from its first
        changed token (the unchanged prefix's activations are the original's, bit for bit),
        under a new handle; the original stays as it was. `diff(original, edited)` compares them."""
        call, conversation_after = self.edit_call(conversation, message, text)
        call.wait()
        return conversation_after()

    def diff(self, parent: Conversation | str, child: Conversation | str) -> BranchDiff:
        """Which token positions of `child` differ from `parent` (difflib on token ids), every
        other position paired with its parent counterpart, and cos(child, parent) of the
        activations there. No model runs."""
        a, b = self.held(parent), self.held(child)
        return diff_conversations(a.tokens, b.tokens, a.activations, b.activations)

    def compare_call(self, conversation: Conversation | str, i: int, j: int, sampling: Sampling = Sampling()) -> Call:
        from .runtime.steer import compare

        held = self.held(conversation)
        self._positions(held, [i, j])
        check_sampling(sampling)
        return self.submit(self._on_conversation(held, lambda e, c: compare(e, i, j, sampling, c)),
                           ev.JobKind.COMPARE, ev.PRIORITY_EXPLAIN)

    def compare(self, conversation: Conversation | str, i: int, j: int, sampling: Sampling = Sampling()) -> Comparison:
        """cos(a, b) of tokens i and j, and the explanations of a − b and b − a."""
        return self.compare_call(conversation, i, j, sampling).wait()

    def steer_call(self, conversation: Conversation | str, index: int, edited: str = "", alpha: float = DEFAULT_ALPHA,
                   span: str = "here", max_new_tokens: int = DEFAULT_STEER_TOKENS, original: str | None = None,
                   sampling: Sampling = Sampling(), source: VectorSource | None = None) -> Call:
        from .runtime import steer as steering
        from .store.vector_files import check_source

        held = self.held(conversation)
        self._positions(held, [index])
        steering.check_arguments(index, source if source is not None else edited, alpha, span, max_new_tokens)
        if source is not None:  # a file / SAE row read and checked, a − b's tokens, before the job is queued
            check_source(source, self.info.d_model, self.info.layer, len(held.tokens), held.activations)
        if max_new_tokens > 512:
            raise InputError(f"max_new_tokens {max_new_tokens} is over 512: ask for a shorter continuation.")
        check_sampling(sampling)
        return self.submit(self._on_conversation(held, lambda e, c: steering.steer(
            e, index, edited, alpha, span, max_new_tokens, original, sampling, c, keep=False, source=source)),
            ev.JobKind.STEER, ev.PRIORITY_BACKGROUND)

    def steer(self, conversation: Conversation | str, index: int, edited: str = "", alpha: float = DEFAULT_ALPHA,
              span: str = "here", max_new_tokens: int = DEFAULT_STEER_TOKENS, original: str | None = None,
              sampling: Sampling = Sampling(), source: VectorSource | None = None) -> SteerResult:
        """Steer: what if the model had thought `edited` at token `index`? Steers the subject's layer-K
        residual by AR(edited) − AR(original) (× the activation's norm × alpha) and returns
        the top-5 before/after and the plain and steered continuations. With `source`
        (core.steer_sources: FileVector, TokenDifference, SaeFeature) the vector comes from
        there instead, its direction × alpha × the layer's median activation norm over the
        conversation; `result.source` records it."""
        return self.steer_call(conversation, index, edited, alpha, span, max_new_tokens, original, sampling,
                               source).wait()


__all__ = ["Call", "Conversation", "MAX_POSITIONS", "Nla", "NlaError", "UnknownHandle", "as_messages"]
