"""A client for `nla-tui serve` with the methods of the in-process Nla (core/api.py):
tokenize, capture, activations, explain (streamed), explain_vectors, score, compare,
steer. It returns the same plain types (Conversation, Explanation, Score, Comparison,
SteerResult), so a notebook switches between the two by changing one line.

HTTP only (httpx): no torch, no models. Imported as nla_tui.client. The token defaults to the one `nla-tui serve`
wrote for this user (the same config dir), else give it (`token=` or NLA_TUI_TOKEN).
"""

from __future__ import annotations

import json
import os
import secrets
from typing import Any, Callable, Iterator, Sequence

import httpx
import numpy as np

from ..core.api_call import current_scope
from ..core.branch_tree import BranchDiff, diff_conversations
from ..core.captured import Conversation, Messages, StreamItem
from ..core.steer_results import Comparison, SteerResult
from ..core.errors import Cancelled, InputError, NlaError
from ..core.events import ChatDelta, ChatStarted, ExplainDelta
from ..core.steer_jobs import DEFAULT_ALPHA
from ..core.steer_sources import TokenDifference
from ..core.types import Candidate, Explanation, Message, ModelInfo, Sampling, Score, SentenceScore, TokenInfo
from ..paths import server_token_path


ACTIVATIONS_PER_REQUEST = 1024  # the server's cap (server/app.py MAX_ACTIVATIONS)


class ServerError(NlaError):
    """The server refused a request (its one-line reason) or could not be reached."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def default_token() -> str:
    env = os.environ.get("NLA_TUI_TOKEN")
    if env:
        return env.strip()
    path = server_token_path()
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        raise InputError(f"No server token: pass token=..., set NLA_TUI_TOKEN, or copy the server's {path} "
                         f"(printed by `nla-tui serve`) to this machine.") from None


def _messages_json(messages: Messages) -> Any:
    if isinstance(messages, str):
        return messages
    if isinstance(messages, dict):
        messages = messages.get("messages", messages)
    return [m.to_json() if isinstance(m, Message) else m for m in messages]


def _handle(conversation: Conversation | str) -> str:
    return conversation.handle if isinstance(conversation, Conversation) else str(conversation)


def _sampling(s: Sampling) -> dict[str, Any]:
    return s.to_json()


class NlaClient:
    """`NlaClient("http://127.0.0.1:8765")`: the Nla API of a running `nla-tui serve`."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 600.0, request_id: str | None = None,
                 client_id: str | None = None):
        """`request_id`: sent as X-Request-Id, so another client can cancel_request(it).
        `client_id`: X-Client-Id, what the server's rate limit counts by (default: one per instance)."""
        self.url = url.rstrip("/")
        # X-Client-Id: the server's rate limit counts each client apart (server/guard.py).
        headers = {"authorization": f"Bearer {token or default_token()}", "x-client-id": client_id or secrets.token_hex(8)}
        if request_id:
            headers["x-request-id"] = request_id
        self._http = httpx.Client(base_url=self.url, timeout=httpx.Timeout(timeout, connect=10.0), headers=headers)
        self._info: ModelInfo | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "NlaClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------ transport

    @staticmethod
    def _raise_for(r: httpx.Response) -> None:
        if r.status_code < 400:
            return
        try:
            reason = r.json()["error"]
        except Exception:
            reason = r.text[:300] or r.reason_phrase
        raise ServerError(f"The server refused ({r.status_code}): {reason}", r.status_code)

    def _scoped(self) -> dict[str, str]:
        """Headers of a request made inside a CallScope (core/api_call.py): its own request id,
        so cancelling the scope cancels this request's job on the server."""
        scope = current_scope()
        if scope is None:
            return {}
        rid = secrets.token_hex(8)
        scope.add(lambda: self.cancel_request(rid))
        return {"x-request-id": rid}

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        try:
            r = self._http.request(method, path, json=body, headers=self._scoped() if method == "POST" else None)
        except httpx.HTTPError as e:
            raise ServerError(f"Cannot reach the nla-tui server at {self.url} ({type(e).__name__}: {e}); is "
                              f"`nla-tui serve` running, and the SSH tunnel up?") from None
        self._raise_for(r)
        return r.json()

    # ------------------------------------------------------------ the Nla methods

    @property
    def info(self) -> ModelInfo:
        if self._info is None:
            self._info = ModelInfo.from_json(self._request("GET", "/v1/info")["models"])
        return self._info

    def cancel_request(self, request_id: str) -> bool:
        """Cancel a request another NlaClient sent with this request_id; False if it is over."""
        try:
            self._request("DELETE", f"/v1/requests/{request_id}")
            return True
        except ServerError as e:
            if e.status == 404:
                return False
            raise

    def status(self) -> dict[str, Any]:
        return self._request("GET", "/v1/status")

    def tokenize(self, messages: Messages) -> list[TokenInfo]:
        d = self._request("POST", "/v1/tokenize", {"messages": _messages_json(messages)})
        return [TokenInfo.from_json(t) for t in d["tokens"]]

    def capture(self, messages: Messages) -> Conversation:
        return Conversation.from_json(self._request("POST", "/v1/capture", {"messages": _messages_json(messages)}))

    def activations(self, conversation: Conversation | str, positions: Sequence[int] | None = None) -> np.ndarray:
        if positions is None:
            if not isinstance(conversation, Conversation):
                raise InputError("Give the positions (or the Conversation, whose tokens say how many there are).")
            positions = range(len(conversation.tokens))
        positions, chunks = list(positions), []
        for k in range(0, len(positions), ACTIVATIONS_PER_REQUEST):
            d = self._request("POST", "/v1/activations", {"handle": _handle(conversation),
                                                          "positions": positions[k:k + ACTIVATIONS_PER_REQUEST]})
            chunks.append(np.asarray(d["vectors"], np.float32).reshape(-1, self.info.d_model))
        return np.concatenate(chunks) if chunks else np.zeros((0, self.info.d_model), np.float32)

    def edit(self, conversation: Conversation | str, message: int, text: str) -> Conversation:
        """The conversation with message `message` replaced by `text`, captured on the server
        from its first changed token, under a new handle (Nla.edit)."""
        return Conversation.from_json(self._request("POST", "/v1/edit", {
            "handle": _handle(conversation), "message": message, "text": text}))

    def diff(self, parent: Conversation, child: Conversation) -> BranchDiff:
        """Nla.diff over HTTP: the token diff of two captured conversations and cos of their
        aligned activations (fetched)."""
        return diff_conversations(parent.tokens, child.tokens, self.activations(parent), self.activations(child))

    def forget(self, conversation: Conversation | str) -> None:
        self._request("DELETE", f"/v1/conversations/{_handle(conversation)}")

    def explain_stream(self, conversation: Conversation | str | None = None, positions: Sequence[int] | None = None,
                       sampling: Sampling = Sampling(), prompt: str | None = None,
                       vectors: Any = None) -> Iterator[StreamItem]:
        """ExplainDelta (text so far) and finished Explanations as the server streams them;
        leaving the loop early closes the connection, and the server cancels the job."""
        body: dict[str, Any] = {"sampling": _sampling(sampling), "prompt": prompt}
        if conversation is not None:
            body.update(handle=_handle(conversation), positions=list(positions or []))
        else:
            body["vectors"] = np.asarray(vectors, np.float32).reshape(-1, np.shape(vectors)[-1]).tolist()
        for event, data in self._events("/v1/explain", body):
            if event == "delta":
                yield ExplainDelta(data["index"], data["text"])
            elif event == "explanation":
                yield Explanation.from_json(data)

    def chat_stream(self, conversation: Conversation | str | None, text: str,
                    max_new_tokens: int = 256) -> Iterator[ChatStarted | ChatDelta | Conversation]:
        """A user turn after a captured conversation (None: a new one): ChatStarted (the prompt's
        tokens), ChatDelta (reply text), then the new Conversation, captured on the server."""
        body = {"handle": None if conversation is None else _handle(conversation), "text": text,
                "max_new_tokens": max_new_tokens}
        for event, data in self._events("/v1/chat", body):
            if event == "started":
                yield ChatStarted([TokenInfo.from_json(t) for t in data["tokens"]])
            elif event == "delta":
                yield ChatDelta(data["text"])
            elif event == "done":
                yield Conversation.from_json(data)

    def _events(self, path: str, body: dict[str, Any]) -> Iterator[tuple[str, Any]]:
        """(event, data) of a server-sent event stream; an `error` event raises. Closing the
        generator closes the connection, and the server cancels the job."""
        try:
            with self._http.stream("POST", path, json=body, headers=self._scoped()) as r:
                if r.status_code >= 400:
                    r.read()
                    self._raise_for(r)
                event = None
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        data = json.loads(line[6:])
                        if event == "error":
                            raise (Cancelled() if data["error"] == "Cancelled." else ServerError(data["error"]))
                        yield event, data
        except httpx.HTTPError as e:
            raise ServerError(f"The stream from {self.url}{path} broke ({type(e).__name__}: {e}).") from None

    def explain(self, conversation: Conversation | str, positions: Sequence[int], sampling: Sampling = Sampling(),
                prompt: str | None = None, on_text: Callable[[int, str], None] | None = None) -> list[Explanation]:
        return _collect(self.explain_stream(conversation, positions, sampling, prompt), on_text)

    def explain_vectors(self, vectors: Any, sampling: Sampling = Sampling(), prompt: str | None = None,
                        on_text: Callable[[int, str], None] | None = None) -> list[Explanation]:
        return _collect(self.explain_stream(None, None, sampling, prompt, vectors=vectors), on_text)

    def score(self, text: str, vector: Any) -> Score:
        vec = np.asarray(vector, np.float32).reshape(-1).tolist()
        d = self._request("POST", "/v1/score", {"text": text, "vector": vec})
        return Score.from_json(d)

    def sentence_scores(self, text: str, vector: Any) -> list[SentenceScore] | None:
        """Each sentence of `text` scored against `vector` alone and left out (Nla.sentence_scores)."""
        vec = np.asarray(vector, np.float32).reshape(-1).tolist()
        d = self._request("POST", "/v1/sentences", {"text": text, "vector": vec})
        return None if d["sentences"] is None else [SentenceScore(str(x["text"]), x["alone"], x["without"])
                                                    for x in d["sentences"]]

    def logit_lens(self, conversation: Conversation | str, position: int) -> list[list[Candidate]] | None:
        """The subject's top-3 at `position` read at every layer (Nla.logit_lens)."""
        d = self._request("POST", "/v1/lens", {"handle": _handle(conversation), "position": position})
        return None if d["layers"] is None else [[Candidate(int(c["token_id"]), str(c["text"]), float(c["prob"]))
                                                  for c in top] for top in d["layers"]]

    def compare(self, conversation: Conversation | str, i: int, j: int, sampling: Sampling = Sampling()) -> Comparison:
        return Comparison.from_json(self._request("POST", "/v1/compare", {
            "handle": _handle(conversation), "i": i, "j": j, "sampling": _sampling(sampling)}))

    def steer(self, conversation: Conversation | str, index: int, edited: str = "", alpha: float = DEFAULT_ALPHA,
              span: str = "here", max_new_tokens: int = 32, original: str | None = None,
              sampling: Sampling = Sampling(), source: TokenDifference | None = None) -> SteerResult:
        """Nla.steer over HTTP; of the vector sources only a − b (TokenDifference) travels: the
        server reads no vector file or SAE directory for a client."""
        if source is not None and not isinstance(source, TokenDifference):
            raise InputError(f"Over HTTP a steer takes an edited explanation or a − b of two tokens; "
                             f"{source.describe()} is read on this machine: use Nla.steer or nla-tui steer.")
        body = {"handle": _handle(conversation), "index": index, "alpha": alpha, "span": span,
                "max_new_tokens": max_new_tokens, "original": original, "sampling": _sampling(sampling)}
        body.update({"edited": edited} if source is None else {"diff": [source.a, source.b]})
        return SteerResult.from_json(self._request("POST", "/v1/steer", body))


__all__ = ["NlaClient", "ServerError", "default_token"]


def _collect(stream, on_text: Callable[[int, str], None] | None) -> list[Explanation]:
    """The finished explanations of an explain stream; its text deltas go to on_text."""
    out = []
    for item in stream:
        if isinstance(item, ExplainDelta):
            if on_text is not None:
                on_text(item.index, item.text)
        else:
            out.append(item)
    return out
