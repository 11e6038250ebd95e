"""MCP tools over the NLA, with the official `mcp` SDK, so an agent can audit a transcript:
tokenize, explain_token, explain_conversation, score, steer, and search when the server
was started on a corpus sweep (`--corpus DIR`, issue 22's index).

The tools run on any backend with the Nla methods: the in-process Nla (`nla-tui mcp`,
stdio; or /mcp of `nla-tui serve`, streamable HTTP behind the server's token) or an
NlaClient (`nla-tui mcp --server URL`: stdio for the agent, the models on the GPU box).
Each call captures the messages it is given, so a tool call stands alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import anyio

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

from ..core.api_call import CallScope
from ..core.errors import InputError, NlaError
from ..core.steer_jobs import DEFAULT_ALPHA
from ..core.steer_sources import TokenDifference
from ..core.types import NOISY_PREFIX, Sampling

MessagesArg = Union[str, list[dict[str, Any]]]
MAX_TOOL_POSITIONS = 16  # explanations one explain_conversation call returns (AV time adds up)
MAX_SEARCH_HITS = 200
INSTRUCTIONS = (
    "Natural Language Autoencoder tools for a subject language model. `messages` is a prompt string or an "
    "OpenAI-style chat (system/user/assistant/tool, tool_calls). Positions are token indices as `tokenize` "
    "lists them. An explanation is the AV's reading of the subject's layer-K activation at that token; its "
    "score (fve_nrm, cos) says how faithfully the AR reads the text back into the activation: trust a "
    "'good' one more than a 'poor' one.")


def _explanation(e: Any, token: Any = None) -> dict[str, Any]:
    d = {"position": e.index, "explanation": e.text, "truncated": e.truncated, "warnings": e.warnings,
         "score": None if e.score is None else {"fve_nrm": e.score.fve_nrm, "cos": e.score.cos,
                                                  "label": e.score.label}}
    if token is not None:
        d.update(token=token.text, role=token.role)
    return d


def spread(candidates: list[int], limit: int) -> list[int]:
    """Up to `limit` positions evenly spread over the candidates (first and last included)."""
    if len(candidates) <= limit:
        return candidates
    step = (len(candidates) - 1) / (limit - 1) if limit > 1 else 0
    return sorted({candidates[round(k * step)] for k in range(limit)})


def hit_json(h: Any) -> dict[str, Any]:
    """One search hit of a corpus sweep (core/corpus/index.py), as the tools and /v1/search return it."""
    return {"conversation_id": h.conversation_id, "token_index": h.token_index, "role": h.role,
            "token": h.token_text, "context_before": h.context_before, "context_after": h.context_after,
            "explanation": h.explanation, "fve_nrm": h.fve_nrm, "verdict": h.shown_verdict, "specificity": h.specificity,
            "surprise": h.surprise}


def search_corpus(corpus: Path, query: str, role: str | None, min_fve: float | None, sort: str,
                  limit: int) -> dict[str, Any]:
    """Search the sweep the server was started with (`--corpus`): the folder is the server's, never the caller's."""
    from ..core.corpus import index
    from ..core.corpus.selection import parse_roles

    if not 1 <= limit <= MAX_SEARCH_HITS:
        raise InputError(f"limit {limit} must be between 1 and {MAX_SEARCH_HITS}.")
    hits = index.search(corpus, query, parse_roles(role) if role else None, min_fve, sort, limit)
    return {"hits": [hit_json(h) for h in hits], "note": getattr(hits, "note", "")}  # note: an order not asked for


def build_mcp(backend: Any, corpus: Path | None = None) -> MCPServer:
    """The tools over `backend`; `search` too when a corpus sweep folder is given."""
    # The SDK only here: the HTTP server (and search_corpus) import this module without MCP.
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    mcp = MCPServer(name="nla-tui", instructions=INSTRUCTIONS)

    async def run(fn, *args):
        scope = CallScope()  # the jobs fn starts, stopped if the agent cancels the tool call

        def in_scope():
            with scope.active():
                return fn(*args)
        try:
            return await anyio.to_thread.run_sync(in_scope, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):  # stopping may itself be a request (NlaClient)
                await anyio.to_thread.run_sync(scope.cancel)
            raise
        except NlaError as e:  # the agent reads what to change; anything else stays a logged crash
            raise ToolError(str(e)) from None

    @mcp.tool()
    async def tokenize(messages: MessagesArg) -> dict[str, Any]:
        """List the tokens the subject sees for these messages: position, text and role
        (bos, special, system, user, model, tool_call, tool_result)."""
        tokens = await run(backend.tokenize, messages)
        return {"tokens": [{"position": t.index, "text": t.text, "role": t.role} for t in tokens]}

    @mcp.tool()
    async def explain_token(messages: MessagesArg, position: int, max_new_tokens: int = 200) -> dict[str, Any]:
        """Explain what the subject model represents at one token of the conversation, with the
        AR's fidelity score of that explanation."""
        conv = await run(backend.capture, messages)
        exps = await run(backend.explain, conv, [position], Sampling(max_new_tokens=max_new_tokens))
        return _explanation(exps[0], conv.tokens[position])

    @mcp.tool()
    async def explain_conversation(messages: MessagesArg, positions: list[int] | None = None,
                                   role: str | None = "model", limit: int = MAX_TOOL_POSITIONS,
                                   max_new_tokens: int = 200) -> dict[str, Any]:
        """Explain several tokens of a conversation (e.g. an agent transcript). Without
        `positions`, up to `limit` (at most 16) tokens of `role` (default: the model's own tokens;
        null for every non-template token) spread evenly over the conversation."""
        conv = await run(backend.capture, messages)
        if positions is None:
            pool = [t.index for t in conv.tokens if t.index >= NOISY_PREFIX and t.role not in ("bos", "special")
                    and (role is None or t.role == role)]
            positions = spread(pool, max(1, min(limit, MAX_TOOL_POSITIONS)))
            if not positions:
                raise ToolError(f"No tokens with role {role!r} in this conversation; pass role=null or positions.")
        exps = await run(backend.explain, conv, positions, Sampling(max_new_tokens=max_new_tokens))
        return {"tokens": len(conv.tokens),
                "explanations": [_explanation(e, conv.tokens[e.index]) for e in exps]}

    @mcp.tool()
    async def score(text: str, messages: MessagesArg, position: int) -> dict[str, Any]:
        """How well `text` describes the subject's activation at `position`: the AR reads the
        text back into a vector and compares (fve_nrm: 1 perfect, 0 no better than the mean)."""
        conv = await run(backend.capture, messages)
        vector = (await run(backend.activations, conv, [position]))[0]
        s = await run(backend.score, text, vector)
        return {"fve_nrm": s.fve_nrm, "cos": s.cos, "mse_nrm": s.mse_nrm, "label": s.label}

    @mcp.tool()
    async def steer(messages: MessagesArg, position: int, edited: str | None = None, diff: list[int] | None = None,
                    alpha: float = DEFAULT_ALPHA, span: str = "here", max_new_tokens: int = 32) -> dict[str, Any]:
        """Steer the subject at `position` and return the next-token top-5 before and after and the
        plain and steered continuations. The vector, one of: `edited` — what if the model had
        thought this explanation there (AR(edited) − AR(its own explanation), alpha × the token's
        activation norm); `diff` [a, b] — activation[a] − activation[b] of two tokens of the same
        conversation (alpha × the layer's median activation norm). span 'here' or 'onward'."""
        if (edited is None) == (diff is None):
            raise ToolError("Give either edited (an edited explanation) or diff ([a, b], two token positions).")
        if diff is not None and len(diff) != 2:
            raise ToolError(f"diff takes two token positions [a, b], got {len(diff)}.")
        source = None if diff is None else TokenDifference(int(diff[0]), int(diff[1]))
        conv = await run(backend.capture, messages)
        b = await run(lambda: backend.steer(conv, position, edited or "", alpha, span, max_new_tokens, source=source))
        cand = lambda cs: [{"text": c.text, "prob": c.prob} for c in cs]  # noqa: E731
        out = {"token": b.token_text, "original_explanation": b.original_explanation, "before": cand(b.before),
               "after": cand(b.after), "original_text": b.original_text, "steered_text": b.steered_text}
        if b.source is not None:  # the a − b vector: its norm and alpha's unit (plain JSON data)
            out["vector"] = {k: b.source[k] for k in ("describe", "norm", "unit", "unit_norm", "layer") if k in b.source}
        return out

    if corpus is not None:
        @mcp.tool()
        async def search(query: str, role: str | None = None, min_fve: float | None = None, sort: str = "rank",
                         limit: int = 20) -> dict[str, Any]:
            """Search the explanations of the corpus sweep this server holds (FTS5: words, "a phrase",
            prefix*, AND / OR / NOT; an empty query lists by `sort`): rank, fve, -fve, specificity,
            surprise or norm. `role`: e.g. assistant, user, tool, comma separated."""
            return await run(search_corpus, corpus, query, role, min_fve, sort, limit)

    return mcp
