"""The HTTP API of `nla-tui serve` (FastAPI on uvicorn): one Nla (core/api.py) behind
every route, so requests from every client queue on the TUI's scheduler (priorities;
a client that disconnects cancels its job), and the MCP tools at /mcp.

Routes (JSON in, JSON out; explain streams server-sent events), schema at /openapi.json:
  GET  /v1/info                 models, layer, d_model, limits
  GET  /v1/status               queue depth, jobs finished / cancelled / failed, conversations held
  POST /v1/tokenize             {messages} → tokens (no model run)
  POST /v1/capture              {messages} → handle, tokens (role, norm, top-k next tokens)
  POST /v1/activations          {handle, positions} → vectors
  DELETE /v1/conversations/{h}  drop a captured conversation
  POST /v1/explain              {handle, positions} or {vectors} → SSE: delta, explanation, done | error
  POST /v1/chat                 {handle?, text} → SSE: started (prompt tokens), delta, done (the new conversation)
  POST /v1/score                {text, vector} or {text, handle, position} → cos, mse_nrm, fve_nrm, label
  POST /v1/sentences            {text, vector} or {text, handle, position} → each sentence alone / left out
  POST /v1/lens                 {handle, position} → the logit lens: top-3 next tokens at every layer
  POST /v1/compare              {handle, i, j} → cos, explanations of a − b and b − a
  POST /v1/steer                {handle, index, edited | diff [a, b], alpha, span} → top-5 before/after, continuations
  DELETE /v1/requests/{id}      cancel the request sent with header X-Request-Id: id
  GET  /v1/sweep, POST /v1/search   with --corpus DIR: the sweep's manifest; search its explanations
Every refusal is a 4xx with {"error": one line}; nothing here reads or writes a path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, model_validator
from starlette.exceptions import HTTPException
from starlette.middleware.body_limit import RequestBodyLimitMiddleware

from .. import __version__
from ..core.api import MAX_POSITIONS, Call, Nla, UnknownHandle
from ..core.errors import Cancelled, NlaError
from ..core.events import ChatStarted, ExplainDelta
from ..core.steer_jobs import DEFAULT_ALPHA
from ..core.steer_sources import TokenDifference
from ..core.store.jsonsafe import finite
from ..core.types import Sampling
from .guard import MAX_BODY_BYTES, RATE_PER_MINUTE, Guard
from .mcp_tools import search_corpus

log = logging.getLogger(__name__)
POLL_S = 0.25  # how often a waiting request checks that its client is still there
MAX_TEXT = 20_000  # characters of an explanation or edit
MAX_ACTIVATIONS = 1024  # positions one /v1/activations answer carries (a 27B's 1,024 rows: ~60 MB of JSON)

MessagesField = Field(..., description="a prompt string (one user turn) or OpenAI-style chat messages")


class SamplingIn(BaseModel):
    temperature: float = Field(0.0, ge=0, le=10, description="0 = greedy")
    max_new_tokens: int = Field(200, ge=1, le=1024)
    seed: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)

    def to_sampling(self) -> Sampling:
        return Sampling(**self.model_dump())


class MessagesIn(BaseModel):
    messages: Union[str, list[dict[str, Any]]] = MessagesField


class ActivationsIn(BaseModel):
    handle: str = Field(..., max_length=64)
    positions: list[int] = Field(..., min_length=1, max_length=MAX_ACTIVATIONS)


class ExplainIn(BaseModel):
    handle: str | None = Field(None, max_length=64, description="a captured conversation (with positions)")
    positions: list[int] | None = Field(None, min_length=1, max_length=MAX_POSITIONS)
    vectors: list[list[float]] | None = Field(None, min_length=1, max_length=MAX_POSITIONS,
                                              description="raw vectors instead, [n, d_model]")
    sampling: SamplingIn = Field(default_factory=SamplingIn)
    prompt: str | None = Field(None, max_length=MAX_TEXT, description="custom AV prompt with <INJECT>")

    @model_validator(mode="after")
    def one_source(self) -> "ExplainIn":
        if (self.handle is None) == (self.vectors is None):
            raise ValueError("give either handle + positions or vectors")
        if self.handle is not None and self.positions is None:
            raise ValueError("give the positions to explain with the handle")
        return self


class ScoreIn(BaseModel):
    text: str = Field(..., min_length=1, max_length=MAX_TEXT)
    vector: list[float] | None = None
    handle: str | None = Field(None, max_length=64)
    position: int | None = None

    @model_validator(mode="after")
    def one_source(self) -> "ScoreIn":
        if (self.vector is None) == (self.handle is None or self.position is None):
            raise ValueError("give either vector or handle + position")
        return self


class SearchIn(BaseModel):
    query: str = Field("", max_length=2000, description="FTS5: words, \"a phrase\", prefix*, AND / OR / NOT")
    role: str | None = Field(None, max_length=200, description="e.g. assistant,user,tool")
    min_fve: float | None = None
    sort: str = Field("rank", description="rank, fve, -fve, specificity, surprise, norm")
    limit: int = Field(20, ge=1, le=200)


class ChatIn(BaseModel):
    handle: str | None = Field(None, max_length=64, description="continue this captured conversation (none: a new one)")
    text: str = Field(..., min_length=1, max_length=MAX_TEXT)
    max_new_tokens: int = Field(256, ge=1, le=4096)


class EditIn(BaseModel):
    handle: str = Field(..., max_length=64, description="the captured conversation to edit (it stays as it was)")
    message: int = Field(..., ge=0, description="the message to replace (0 = the first)")
    text: str = Field(..., min_length=1, max_length=MAX_TEXT, description="its new text")


class LensIn(BaseModel):
    handle: str = Field(..., max_length=64)
    position: int


class CompareIn(BaseModel):
    handle: str = Field(..., max_length=64)
    i: int
    j: int
    sampling: SamplingIn = Field(default_factory=SamplingIn)


class SteerIn(BaseModel):
    handle: str = Field(..., max_length=64)
    index: int
    edited: str | None = Field(None, min_length=1, max_length=MAX_TEXT,
                               description="the explanation as it should have been")
    diff: tuple[int, int] | None = Field(None, description="[a, b]: steer by activation[a] − activation[b] instead")
    alpha: float = Field(DEFAULT_ALPHA, ge=-100, le=100,
                         description="× the activation's own norm (edited), × the layer's median norm (diff)")
    span: Literal["here", "onward"] = "here"
    max_new_tokens: int = Field(32, ge=1, le=512)
    original: str | None = Field(None, max_length=MAX_TEXT, description="default: the token's explanation")
    sampling: SamplingIn = Field(default_factory=SamplingIn)

    @model_validator(mode="after")
    def one_source(self) -> "SteerIn":
        # Vector files and SAE directories are not read over HTTP: the server would be reading
        # its own disk for a client (nla-tui steer and Nla.steer read the caller's).
        if (self.edited is None) == (self.diff is None):
            raise ValueError("give either edited (an edited explanation) or diff ([a, b], two token indices)")
        return self


def one_line(text: Any) -> str:
    return " ".join(str(text).split())[:2000]


def refuse(status: int, reason: Any) -> JSONResponse:
    return JSONResponse({"error": one_line(reason)}, status_code=status)


def ok(obj: Any) -> JSONResponse:
    return JSONResponse(finite(obj)[0])  # a NaN in a score becomes null, as in saved sessions


def track(request: Request, call: Call) -> None:
    """A request that names itself (header X-Request-Id) can be cancelled by that id from
    another connection (DELETE /v1/requests/{id}): what the attached TUI does on Esc, since
    a client blocked reading a socket cannot close it promptly."""
    rid = request.headers.get("x-request-id", "")
    if 0 < len(rid) <= 64:
        calls = request.app.state.calls
        calls[rid] = call
        call.on_done(lambda: calls.pop(rid, None))


async def finished(request: Request, call: Call) -> Any:
    """Wait for a Call without blocking the event loop; cancel it if the client goes away."""
    track(request, call)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    call.on_done(lambda: loop.is_closed() or loop.call_soon_threadsafe(done.set))
    try:
        while not done.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(done.wait(), POLL_S)
            if not done.is_set() and await request.is_disconnected():
                call.cancel()
                raise Cancelled()
    except asyncio.CancelledError:
        call.cancel()
        raise
    return call.outcome()


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(finite(data)[0])}\n\n"


def streamed(request: Request, start: Any, encode: Any, final: Any) -> StreamingResponse:
    """Server-sent events of a Call: `start(put)` queues it with a sink the worker thread
    calls; each item goes out as `encode(item)`, then `done` with `final(call)` or `error`.
    A client that goes away mid-stream cancels the call."""
    loop = asyncio.get_running_loop()
    items: asyncio.Queue = asyncio.Queue()

    def put(item: Any) -> None:  # on the worker thread
        if not loop.is_closed():  # else the server is shutting down: nobody is listening
            loop.call_soon_threadsafe(items.put_nowait, item)
    call = start(put)  # checks the request first: a bad one is a 4xx, not a stream
    call.on_done(lambda: put(None))
    track(request, call)

    async def events():
        try:
            while (item := await items.get()) is not None:
                yield encode(item)
            try:
                yield sse("done", final(call))
            except Exception as e:  # the stream has started: the error goes in it
                yield sse("error", {"error": one_line("Cancelled." if isinstance(e, Cancelled) else e)})
        finally:
            if not call.done.is_set():
                call.cancel()  # the client went away mid-stream
    return StreamingResponse(events(), media_type="text/event-stream", headers={"cache-control": "no-cache"})


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0]
        if err.get("type") == "json_invalid":
            return refuse(400, f"The body is not valid JSON ({err.get('msg', '')}); send a JSON object.")
        if tuple(err.get("loc", ())) == ("body",) and err.get("type") in ("model_attributes_type", "dict_type",
                                                                            "model_type"):
            return refuse(400, "The body must be a JSON object sent with 'Content-Type: application/json'.")
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        return refuse(422, f"{where}: {err.get('msg', 'invalid').removeprefix('Value error, ')}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return refuse(exc.status_code, exc.detail)

    @app.exception_handler(UnknownHandle)
    async def unknown(request: Request, exc: UnknownHandle) -> JSONResponse:
        return refuse(404, exc)

    @app.exception_handler(NlaError)
    async def user_error(request: Request, exc: NlaError) -> JSONResponse:
        return refuse(400, exc)

    @app.exception_handler(Cancelled)
    async def cancelled(request: Request, exc: Cancelled) -> JSONResponse:
        return refuse(499, "Cancelled: the client went away.")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request %s failed", request.url.path)
        return refuse(500, f"Internal error ({type(exc).__name__}: {exc}); the server keeps running and logged it.")


def mcp_lifespan(mcp: Any):
    """The MCP transport's session manager runs as long as the app does."""
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async with mcp.session_manager.run():
            yield
    return lifespan


def build_app(nla: Nla, token: str, token_file: Path | None = None, mcp: Any = None,
              rate_per_minute: int = RATE_PER_MINUTE, max_body_bytes: int = MAX_BODY_BYTES,
              corpus: Path | None = None, host: str = "127.0.0.1") -> FastAPI:
    """The API over `nla`, guarded by `token`; `mcp` (server/mcp_tools.build_mcp) is served at /mcp;
    `corpus`, a sweep folder chosen at start, adds /v1/sweep and /v1/search."""
    app = FastAPI(title="nla-tui", version=__version__, docs_url=None, redoc_url=None,
                  lifespan=None if mcp is None else mcp_lifespan(mcp),
                  description="Natural Language Autoencoder explanations of a subject model's activations. "
                              "Every request needs 'Authorization: Bearer <token>'.")
    if mcp is not None:
        # On a loopback host the SDK also checks Host/Origin headers (DNS rebinding); elsewhere the token alone.
        app.router.routes.extend(mcp.streamable_http_app(streamable_http_path="/mcp", host=host).routes)
    add_error_handlers(app)
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=max_body_bytes)  # chunked bodies too
    app.add_middleware(Guard, token=token, token_file=token_file, rate_per_minute=rate_per_minute,
                       max_body_bytes=max_body_bytes)

    @app.get("/v1/info")
    async def info() -> JSONResponse:
        return ok({"models": nla.info.to_json(), "version": __version__,
                   "limits": {"max_positions": MAX_POSITIONS, "max_body_bytes": max_body_bytes,
                              "rate_per_minute": rate_per_minute}})

    app.state.calls = {}  # X-Request-Id → its Call, while queued or running (track)

    @app.delete("/v1/requests/{rid}")
    async def cancel_request(rid: str) -> JSONResponse:
        call = app.state.calls.get(rid)
        if call is None:
            return refuse(404, f"No queued or running request has id {rid!r} (it may have finished).")
        call.cancel()
        return ok({"cancelled": rid})

    @app.get("/v1/status")
    async def status() -> JSONResponse:
        return ok(nla.status())

    @app.post("/v1/tokenize")
    async def tokenize(body: MessagesIn, request: Request) -> JSONResponse:
        tokens = await asyncio.to_thread(nla.tokenize, body.messages)
        return ok({"tokens": [t.to_json() for t in tokens]})

    @app.post("/v1/capture")
    async def capture(body: MessagesIn, request: Request) -> JSONResponse:
        call, conversation = nla.capture_call(body.messages)
        await finished(request, call)
        return ok(conversation().to_json())

    @app.post("/v1/activations")
    async def activations(body: ActivationsIn) -> JSONResponse:
        return ok({"vectors": nla.activations(body.handle, body.positions).tolist()})

    @app.delete("/v1/conversations/{handle}")
    async def forget(handle: str) -> JSONResponse:
        nla.forget(handle)
        return ok({"forgotten": handle})

    @app.post("/v1/explain", responses={200: {"content": {"text/event-stream": {}},
                                              "description": "events: delta {index, text}, explanation "
                                                             "{…}, then done {count} or error {error}"}})
    async def explain(body: ExplainIn, request: Request) -> StreamingResponse:
        vectors, indices = nla.vectors_to_explain(body.handle, body.positions, body.vectors)

        def encode(item: Any) -> str:
            if isinstance(item, ExplainDelta):
                return sse("delta", {"index": item.index, "text": item.text})
            return sse("explanation", item.to_json())
        return streamed(request, lambda put: nla.explain_call(vectors, indices, body.sampling.to_sampling(), body.prompt, put),
                        encode, lambda call: {"count": len(call.outcome())})

    @app.post("/v1/chat", responses={200: {"content": {"text/event-stream": {}},
                                           "description": "events: started {tokens}, delta {text}, then done "
                                                          "{handle, messages, tokens} or error {error}"}})
    async def chat(body: ChatIn, request: Request) -> StreamingResponse:
        after: list = []

        def start(put):
            call, conversation = nla.chat_call(body.handle, body.text, body.max_new_tokens, put)
            after.append(conversation)
            return call

        def encode(item: Any) -> str:
            if isinstance(item, ChatStarted):
                return sse("started", {"tokens": [t.to_json() for t in item.tokens]})
            return sse("delta", {"text": item.text})
        return streamed(request, start, encode, lambda call: after[0]().to_json())

    @app.post("/v1/edit")
    async def edit(body: EditIn, request: Request) -> JSONResponse:
        """The conversation with one message replaced, captured from its first changed token,
        under a new handle; with which positions changed against the original."""
        call, conversation = nla.edit_call(body.handle, body.message, body.text)
        await finished(request, call)
        edited = conversation()
        d = nla.diff(body.handle, edited.handle)
        return ok({**edited.to_json(), "changed": d.changed, "first_changed": d.first_changed})

    @app.post("/v1/score")
    async def score(body: ScoreIn, request: Request) -> JSONResponse:
        vector = body.vector if body.vector is not None else nla.activations(body.handle, [body.position])[0]
        s = await finished(request, nla.score_call(body.text, vector))
        return ok({**s.to_json(), "fidelity": s.fidelity, "label": s.label} if s else None)

    @app.post("/v1/sentences")
    async def sentences(body: ScoreIn, request: Request) -> JSONResponse:
        vector = body.vector if body.vector is not None else nla.activations(body.handle, [body.position])[0]
        scores = await finished(request, nla.sentences_call(body.text, vector))
        return ok({"sentences": None if scores is None else [asdict(x) for x in scores]})

    @app.post("/v1/lens")
    async def lens(body: LensIn, request: Request) -> JSONResponse:
        layers = await finished(request, nla.lens_call(body.handle, body.position))
        return ok({"layers": None if layers is None else [[asdict(c) for c in top] for top in layers]})

    @app.post("/v1/compare")
    async def compare(body: CompareIn, request: Request) -> JSONResponse:
        c = await finished(request, nla.compare_call(body.handle, body.i, body.j, body.sampling.to_sampling()))
        return ok(c.to_json())

    @app.post("/v1/steer")
    async def steer(body: SteerIn, request: Request) -> JSONResponse:
        source = None if body.diff is None else TokenDifference(*body.diff)
        b = await finished(request, nla.steer_call(body.handle, body.index, body.edited or "", body.alpha, body.span,
                                                   body.max_new_tokens, body.original, body.sampling.to_sampling(),
                                                   source))
        return ok({**b.to_json(), "original_text": b.original_text, "steered_text": b.steered_text})

    if corpus is not None:
        add_corpus_routes(app, corpus)
    return app


def add_corpus_routes(app: FastAPI, corpus: Path) -> None:
    from ..core.corpus.shards import finished_shards, read_manifest

    @app.get("/v1/sweep")
    async def sweep() -> JSONResponse:
        """The sweep's manifest and how many shards are finished (a running sweep adds more)."""
        return ok({"manifest": read_manifest(corpus), "finished_shards": len(finished_shards(corpus))})

    @app.post("/v1/search")
    async def search(body: SearchIn) -> JSONResponse:
        return ok(await asyncio.to_thread(search_corpus, corpus, body.query, body.role, body.min_fve, body.sort,
                                          body.limit))
