"""The MCP tools through the SDK's own client (in process, and over streamable HTTP behind
the server's token), and every example of docs/API.md, run as written on the demo pair."""

from __future__ import annotations

import re
from pathlib import Path

import anyio
import httpx
import pytest

from tests._support_server import TOKEN, serving, small_sweep
from tests._support_paths import REPO

DOCS = REPO / "docs" / "API.md"
QUESTION = "What is the capital of France?"
LONGER = "Please tell me which city is the capital of France, and why it became the capital."
TOOLS = {"tokenize", "explain_token", "explain_conversation", "score", "steer", "search"}
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return small_sweep(tmp_path_factory.mktemp("sweep"))


@pytest.fixture(scope="module")
def served(demo_engine, corpus):
    with serving(demo_engine, corpus=corpus) as (url, nla):
        yield url, nla


def test_mcp_tools_listed_and_called_in_process(served, corpus):
    from mcp import Client

    from nla_tui.server.mcp_tools import build_mcp

    _, nla = served

    async def session():
        async with Client(build_mcp(nla, corpus)) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            tokens = (await client.call_tool("tokenize", {"messages": QUESTION})).structured_content["tokens"]
            france = next(t["position"] for t in tokens if t["text"] == " France")
            explained = await client.call_tool("explain_token", {"messages": QUESTION, "position": france,
                                                                 "max_new_tokens": 16})
            scored = await client.call_tool("score", {"messages": QUESTION, "position": france,
                                                      "text": explained.structured_content["explanation"]})
            many = await client.call_tool("explain_conversation", {"messages": LONGER, "role": "user",
                                                                   "limit": 2, "max_new_tokens": 8})
            bad = await client.call_tool("explain_token", {"messages": QUESTION, "position": 999})
            found = await client.call_tool("search", {"query": "capital", "min_fve": 0.75})
            return names, france, explained, scored, many, bad, found

    names, france, explained, scored, many, bad, found = anyio.run(session)
    assert TOOLS <= names
    e = explained.structured_content
    assert e["token"] == " France" and e["position"] == france and e["explanation"] and e["score"]["label"]
    assert scored.structured_content["fve_nrm"] == pytest.approx(e["score"]["fve_nrm"], abs=1e-5)
    rows = many.structured_content["explanations"]
    assert len(rows) == 2 and all(r["role"] == "user" for r in rows)
    assert bad.is_error and "out of range" in bad.content[0].text
    assert [h["token"] for h in found.structured_content["hits"]] == ["Paris"]


def test_corpus_routes_search_the_servers_sweep_only(served):
    url, _ = served
    hits = httpx.post(url + "/v1/search", headers=AUTH, json={"query": "capital", "sort": "-fve"}).json()["hits"]
    assert [h["token"] for h in hits] == ["Berlin", "Paris"]
    assert httpx.get(url + "/v1/sweep", headers=AUTH).json()["finished_shards"] == 1
    r = httpx.post(url + "/v1/search", headers=AUTH, json={"query": "\"unclosed"})
    assert r.status_code == 400 and "not a valid search" in r.json()["error"]
    r = httpx.post(url + "/v1/search", headers=AUTH, json={"query": "x", "dir": "/etc"})  # no such field is read
    assert r.status_code == 200 and r.json()["hits"] == []


def test_mcp_over_http_needs_the_token(served):
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    url, _ = served

    async def session():
        http = httpx.AsyncClient(headers={"authorization": f"Bearer {TOKEN}"})
        async with http, Client(streamable_http_client(url + "/mcp", http_client=http)) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            tokens = await client.call_tool("tokenize", {"messages": QUESTION})
            return names, tokens.structured_content["tokens"]

    names, tokens = anyio.run(session)
    assert TOOLS <= names and tokens[0]["role"] == "bos"
    assert httpx.post(url + "/mcp", json={}).status_code == 401


@pytest.mark.parametrize("transport", ["http", "stdio"])
def test_a_cancelled_mcp_tool_call_stops_its_job_on_the_server(served, transport, tmp_path):
    """The agent cancels a long explain_conversation (the SDK client; over the server's
    streamable HTTP, or over stdio to `nla-tui mcp --server URL`, whose NlaClient then
    cancels the request by its id): the server's explain job ends cancelled, not finished."""
    import sys

    from mcp import Client, StdioServerParameters
    from mcp.client.streamable_http import streamable_http_client

    from nla_tui.core import events as ev

    url, nla = served
    scheduler = nla._worker.scheduler
    before = dict(nla.jobs)

    def explaining() -> bool:
        job = scheduler.current
        return job is not None and job.kind == ev.JobKind.EXPLAIN

    async def session():
        http = httpx.AsyncClient(headers=AUTH, timeout=600)
        target = (streamable_http_client(url + "/mcp", http_client=http) if transport == "http" else
                  StdioServerParameters(command=sys.executable, args=["-m", "nla_tui.cli", "mcp", "--server", url,
                                                                      "--token", TOKEN], cwd=str(REPO),
                                        env={"PATH": "/usr/bin:/bin", "NLA_TUI_CONFIG": str(tmp_path)}))
        async with http, Client(target) as client:
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.call_tool, "explain_conversation",
                              {"messages": LONGER, "role": None, "limit": 16, "max_new_tokens": 1000})
                with anyio.fail_after(600):
                    while not explaining():  # the AV is generating on the server
                        await anyio.sleep(0.02)
                tg.cancel_scope.cancel()  # what an agent's cancel does: notifications/cancelled
            with anyio.fail_after(600):
                while nla.jobs["cancelled"] == before["cancelled"] or scheduler.depth:
                    await anyio.sleep(0.02)

    anyio.run(session)
    assert nla.jobs["cancelled"] == before["cancelled"] + 1  # the explain job: stopped
    assert nla.jobs["finished"] == before["finished"] + 1  # only the capture ran to its end
    assert nla.jobs["failed"] == before["failed"]


def test_api_md_examples_run(served, demo_engine, demo_tokenizer, demo_paths, monkeypatch, capsys):
    """Every ```python block of docs/API.md, in order; Nla.load reuses the session's demo
    weights and tokenizer, and the client's URL is this test's server."""
    from tests._support_engine import reusing_demo_loads

    url, _ = served
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 2
    monkeypatch.setenv("NLA_TUI_TOKEN", TOKEN)
    with reusing_demo_loads(demo_tokenizer, demo_paths, demo_engine, ("subject", "av", "ar")):
        scope: dict = {}
        for block in blocks:
            exec(compile(block.replace("http://127.0.0.1:8765", url), str(DOCS), "exec"), scope)
        scope["nla"].close()
        scope["client"].close()
    out = capsys.readouterr().out
    assert "layer 12" in out and "->" in out


def test_mcp_over_stdio_to_a_server(served, tmp_path):
    """`nla-tui mcp --server URL` as an agent launches it: a subprocess speaking MCP on stdio,
    its tools answered by the running server (no models load in it)."""
    import sys

    from mcp import Client, StdioServerParameters

    url, _ = served
    params = StdioServerParameters(command=sys.executable, args=["-m", "nla_tui.cli", "mcp", "--server", url,
                                                                 "--token", TOKEN],
                                   cwd=str(REPO),
                                   env={"PATH": "/usr/bin:/bin", "NLA_TUI_CONFIG": str(tmp_path)})

    async def session():
        async with Client(params) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            tokens = await client.call_tool("tokenize", {"messages": QUESTION})
            return names, tokens.structured_content["tokens"]

    names, tokens = anyio.run(session)
    assert TOOLS - {"search"} <= names and [t["role"] for t in tokens[:2]] == ["bos", "special"]


def test_mcp_steer_takes_an_a_minus_b_vector_and_refuses_neither_or_both(served):
    """The steer tool's `diff` [a, b] steers by activation[a] − activation[b] as Nla.steer with
    TokenDifference does (same continuation); giving neither source or both is one clear error."""
    from mcp import Client

    from nla_tui.core.steer_sources import TokenDifference
    from nla_tui.server.mcp_tools import build_mcp

    _, nla = served

    async def session():
        async with Client(build_mcp(nla)) as client:
            tokens = (await client.call_tool("tokenize", {"messages": QUESTION})).structured_content["tokens"]
            france = next(t["position"] for t in tokens if t["text"] == " France")
            capital = next(t["position"] for t in tokens if t["text"] == " capital")
            steered = await client.call_tool("steer", {"messages": QUESTION, "position": france,
                                                       "diff": [france, capital], "alpha": 1.0,
                                                       "max_new_tokens": 8})
            neither = await client.call_tool("steer", {"messages": QUESTION, "position": france})
            both = await client.call_tool("steer", {"messages": QUESTION, "position": france, "edited": "x",
                                                    "diff": [1, 2]})
            return france, capital, steered, neither, both

    france, capital, steered, neither, both = anyio.run(session)
    s = steered.structured_content
    direct = nla.steer(nla.capture(QUESTION), france, alpha=1.0, max_new_tokens=8, source=TokenDifference(france, capital))
    assert s["steered_text"] == direct.steered_text and s["original_text"] == direct.original_text
    assert s["vector"]["norm"] == pytest.approx(direct.source["norm"], rel=1e-5) and "median" in s["vector"]["unit"]
    assert neither.is_error and "either edited" in neither.content[0].text
    assert both.is_error and "either edited" in both.content[0].text
