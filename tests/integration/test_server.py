"""`nla-tui serve` over real sockets (uvicorn on a free 127.0.0.1 port) and the real demo
pair: every route, the token, refusals as one-line 4xx, a disconnect cancelling its job,
two clients at once. The answers are checked against the in-process API (core/api.py)."""

from __future__ import annotations

import os
import stat
import threading
import time

import httpx
import numpy as np
import pytest

from nla_tui.core.types import Sampling
from tests._support_server import TOKEN, serving

AUTH = {"authorization": f"Bearer {TOKEN}"}
SHORT = Sampling(max_new_tokens=16)
QUESTION = [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}]


@pytest.fixture(scope="module")
def served(demo_engine):
    with serving(demo_engine) as (url, nla):
        yield url, nla


@pytest.fixture(scope="module")
def client(served):
    from nla_tui.client import NlaClient

    with NlaClient(served[0], TOKEN) as c:
        yield c


@pytest.fixture(scope="module")
def conv(client):
    return client.capture(QUESTION)


def refusal(r: httpx.Response, status: int) -> str:
    """The response is `status` with a one-line reason and no traceback."""
    assert r.status_code == status, r.text
    reason = r.json()["error"]
    assert reason and "\n" not in reason and "Traceback" not in reason
    return reason


def test_every_request_needs_the_token(served):
    url, _ = served
    for headers in ({}, {"authorization": "Bearer wrong-token-wrong-token"}, {"authorization": TOKEN}):
        for method, path in (("GET", "/v1/info"), ("GET", "/openapi.json"), ("POST", "/v1/score"), ("POST", "/mcp")):
            r = httpx.request(method, url + path, headers=headers, json={})
            assert "bearer" in refusal(r, 401).lower()
            assert r.headers["www-authenticate"] == "Bearer"
    schema = httpx.get(url + "/openapi.json", headers=AUTH).json()
    assert {"/v1/tokenize", "/v1/capture", "/v1/explain", "/v1/score", "/v1/compare", "/v1/steer"} <= set(schema["paths"])


def test_bad_requests_are_one_line_4xx(served, conv):
    url, nla = served
    post = lambda path, headers=AUTH, **kw: httpx.post(url + path, headers=headers, **kw)  # noqa: E731
    assert "not valid JSON" in refusal(post("/v1/score", content=b'{"text": "a", ',
                                            headers={**AUTH, "content-type": "application/json"}), 400)
    assert "JSON object" in refusal(post("/v1/score", content=b"text=a"), 400)
    assert "text" in refusal(post("/v1/score", json={"vector": [0.0] * nla.info.d_model}), 422)
    assert "d_model" in refusal(post("/v1/score", json={"text": "a", "vector": [1.0, 2.0]}), 400)
    assert "either" in refusal(post("/v1/explain", json={"positions": [1]}), 422)
    assert "out of range" in refusal(post("/v1/explain", json={"handle": conv.handle, "positions": [10_000]}), 400)
    assert "capture it again" in refusal(post("/v1/compare", json={"handle": "nope", "i": 1, "j": 2}), 404)
    assert "span" in refusal(post("/v1/steer", json={"handle": conv.handle, "index": 3, "edited": "x",
                                                       "span": "sideways"}), 422)
    assert "role" in refusal(post("/v1/capture", json={"messages": [{"role": "wizard", "content": "hi"}]}), 400)
    assert "empty" in refusal(post("/v1/capture", json={"messages": "   "}), 400)
    assert "limit" in refusal(post("/v1/score", content=b"x" * (9 << 20)), 413)
    refusal(httpx.get(url + "/v1/nothing-here", headers=AUTH), 404)
    refusal(httpx.get(url + "/v1/score", headers=AUTH), 405)
    assert httpx.get(url + "/v1/status", headers=AUTH).json()["queue_depth"] == 0  # and the server is still up


def test_tokenize_capture_activations_match_in_process(served, client, conv):
    _, nla = served
    assert client.info.d_model == nla.info.d_model and client.info.layer == nla.info.layer
    tokens = client.tokenize(QUESTION)
    assert [t.token_id for t in tokens] == [t.token_id for t in conv.tokens]
    assert {t.role for t in conv.tokens} >= {"bos", "user", "model"}
    assert all(t.norm > 0 and len(t.top) > 0 for t in conv.tokens[1:])
    np.testing.assert_array_equal(client.activations(conv, [3, 5]), nla.activations(conv.handle, [3, 5]))


def test_score_and_explain_stream_match_in_process(served, client, conv):
    _, nla = served
    france = next(t.index for t in conv.tokens if t.text == " France")
    vector = nla.activations(conv.handle, [france])[0]
    here, there = nla.score("Token France", vector), client.score("Token France", vector)
    assert there.cos == pytest.approx(here.cos, abs=1e-6) and there.fve_nrm == pytest.approx(here.fve_nrm, abs=1e-6)
    items = list(client.explain_stream(conv, [france], SHORT))
    deltas, final = items[:-1], items[-1]
    assert deltas and all(d.index == france for d in deltas)
    assert final.index == france and final.score is not None
    assert final.text == nla.explain(conv.handle, [france], SHORT)[0].text  # greedy: the same text both ways
    by_handle = httpx.post(served[0] + "/v1/score", headers=AUTH,
                           json={"text": final.text, "handle": conv.handle, "position": france}).json()
    assert by_handle["fve_nrm"] == pytest.approx(final.score.fve_nrm, abs=1e-5) and by_handle["label"]
    vec_exp = client.explain_vectors(vector[None], SHORT)
    assert vec_exp[0].index == 0 and vec_exp[0].text == final.text  # the same vector, the same explanation


def test_compare_and_steer(client, conv):
    france = next(t.index for t in conv.tokens if t.text == " France")
    c = client.compare(conv, france, france - 2, SHORT)
    assert -1 <= c.cos < 1 and c.diff_norm > 0 and c.a_minus_b.text and c.b_minus_a.text
    b = client.steer(conv, france, 'Token " Germany" after "capital of".', alpha=0.5, max_new_tokens=4,
                     original='Token " France" after "capital of".')
    assert b.index == france and len(b.steered_tokens) == 4 and len(b.original_tokens) == 4
    assert [x.token_id for x in b.before] == [x.token_id for x in conv.tokens[france].top[:len(b.before)]]
    assert b.after != b.before  # the push changed the next-token distribution


def test_edit_a_message_over_http(client, conv):
    """/v1/edit (Nla.edit): a new handle, captured from the first changed token; the
    original's prefix activations, bit for bit; a bad edit is a one-line 4xx."""
    from nla_tui.client.http import ServerError

    user = next(k for k, m in enumerate(conv.messages) if m.role == "user")
    edited = client.edit(conv, user, "What is the capital of Italy?")
    assert edited.handle != conv.handle and edited.messages[user].content.endswith("Italy?")
    d = client.diff(conv, edited)
    assert " Italy" in [edited.tokens[i].text for i in d.changed]
    before, after = client.activations(conv), client.activations(edited)
    assert np.array_equal(after[:d.first_changed], before[:d.first_changed])
    with pytest.raises(ServerError, match="out of range") as e:
        client.edit(conv, 40, "x")
    assert e.value.status == 400 and "\n" not in str(e.value)


def test_a_client_that_disconnects_cancels_its_job(served, conv):
    url, nla = served
    before = nla.jobs["cancelled"]
    body = {"handle": conv.handle, "positions": [4, 5, 6], "sampling": {"max_new_tokens": 1024}}
    with httpx.stream("POST", url + "/v1/explain", headers=AUTH, json=body, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("event: delta"):
                break  # the AV is generating: walk away
    deadline = time.monotonic() + 60
    while nla.jobs["cancelled"] == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert nla.jobs["cancelled"] == before + 1
    assert nla.status()["queue_depth"] == 0


def test_two_clients_at_once(served, conv):
    from nla_tui.client import NlaClient

    url, nla = served
    want = {p: nla.explain(conv.handle, [p], SHORT)[0].text for p in (6, 8)}
    got: dict[int, str] = {}
    errors: list[BaseException] = []

    def one(position: int) -> None:
        try:
            with NlaClient(url, TOKEN) as c:
                got[position] = c.explain(conv.handle, [position], SHORT)[0].text
        except BaseException as e:  # reported below, on the test's thread
            errors.append(e)
    threads = [threading.Thread(target=one, args=(p,)) for p in want]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and got == want


def test_requests_waiting_together_share_one_av_pass(served, conv, demo_engine):
    """Three clients' explain requests queued behind another job run as one AV batch, each
    getting its own explanation, the same text as explained alone (greedy)."""
    from nla_tui.core import events as ev

    _, nla = served
    started, gate = threading.Event(), threading.Event()
    nla.submit(lambda engine, cancel: started.set() or gate.wait(120), ev.JobKind.EXPLAIN, ev.PRIORITY_CHAT)
    try:
        assert started.wait(120)
        positions = [4, 6, 8]
        calls = [nla.explain_call(*nla.vectors_to_explain(conv.handle, [p], None), SHORT, None, None)
                 for p in positions]
        passes = demo_engine.counters["av_generate"]
    finally:
        gate.set()
    together = [c.wait() for c in calls]
    assert demo_engine.counters["av_generate"] == passes + 1
    alone = [nla.explain(conv.handle, [p], SHORT)[0] for p in positions]
    assert demo_engine.counters["av_generate"] == passes + 4
    assert [r[0].index for r in together] == positions
    assert [r[0].text for r in together] == [a.text for a in alone]


def test_rate_limit_answers_429(demo_engine):
    with serving(demo_engine, mcp=False, rate_per_minute=3) as (url, _):
        codes = [httpx.get(url + "/v1/info", headers=AUTH).status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
        r = httpx.get(url + "/v1/info", headers=AUTH)
        assert "a minute" in refusal(r, 429) and int(r.headers["retry-after"]) >= 1


def test_lens_and_sentence_scores_over_http_equal_in_process(demo_engine):
    """POST /v1/lens and /v1/sentences (what the attached TUI's pane shows beside an
    explanation) give what the in-process API gives; a bad position is a one-line 400."""
    from nla_tui.client import NlaClient, ServerError

    with serving(demo_engine, mcp=False) as (url, nla), NlaClient(url, token=TOKEN) as client:
        conv = client.capture("What is the capital of France?")
        france = next(t.index for t in conv.tokens if t.text == " France")
        there, here = client.logit_lens(conv, france), nla.logit_lens(conv.handle, france)
        assert len(there) == len(here) == len(demo_engine.subject.decoder.layers)
        assert [[c.token_id for c in top] for top in there] == [[c.token_id for c in top] for top in here]
        assert [c.prob for c in there[-1]] == pytest.approx([c.prob for c in here[-1]], abs=1e-6)
        text = 'Token " France" after "capital of". The question asks for a city. Next: "?"'
        vector = client.activations(conv, [france])[0]
        remote, local = client.sentence_scores(text, vector), nla.sentence_scores(text, vector)
        assert remote is not None and [x.text for x in remote] == [x.text for x in local] and len(remote) >= 2
        assert [x.without for x in remote] == pytest.approx([x.without for x in local], abs=1e-5)
        assert client.sentence_scores("One sentence only", vector) is None
        with pytest.raises(ServerError, match="out of range") as bad:
            client.logit_lens(conv, 999)
        assert bad.value.status == 400


def test_the_rate_limit_counts_each_client_apart(demo_engine):
    """One client over its limit does not lock out another (each NlaClient, like each
    attached TUI, sends its own X-Client-Id); requests without the token count against their
    address whatever id they claim, so guessing stays slow."""
    from nla_tui.client import NlaClient, ServerError

    with serving(demo_engine, mcp=False, rate_per_minute=3) as (url, _):
        busy, quiet = NlaClient(url, token=TOKEN), NlaClient(url, token=TOKEN)
        try:
            for _ in range(3):
                busy.status()
            with pytest.raises(ServerError, match="per client") as refused:
                busy.status()
            assert refused.value.status == 429
            assert quiet.status()["queue_depth"] == 0  # the other client still gets through
            guesses = [httpx.get(url + "/v1/info", headers={"authorization": "Bearer wrong", "x-client-id": str(k)})
                       .status_code for k in range(4)]
            assert guesses == [401, 401, 401, 429]
            assert quiet.status() and NlaClient(url, token=TOKEN).status()  # a third client: its own budget
        finally:
            busy.close()
            quiet.close()


def test_token_file_is_private_and_kept(tmp_path):
    from nla_tui.core.errors import InputError
    from nla_tui.server.guard import load_or_create_token

    path = tmp_path / "cfg" / "server-token"
    token, where, created = load_or_create_token(path)
    assert created and where == path and len(token) >= 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_token(path) == (token, path, False)
    os.chmod(path, 0o644)
    with pytest.raises(InputError, match="chmod 600"):
        load_or_create_token(path)


def test_serve_arguments_are_checked_before_loading(capsys):
    from nla_tui.cli import main

    assert main(["serve", "--preset", "demo", "--port", "70000"]) == 2
    assert main(["serve", "--preset", "demo", "--host", "gpu-box.example"]) == 2
    err = capsys.readouterr().err
    assert "--port 70000" in err and "not an IP address" in err and "loading" not in err


def test_serve_command_starts_a_guarded_server(demo_engine, demo_tokenizer, demo_paths, tmp_path, monkeypatch,
                                                capsys):
    """`nla-tui serve` itself: token created 0600 in the config dir, the tunnel line printed,
    the app it hands uvicorn answers with the token and refuses without (the demo weights
    are the session's, so nothing loads twice)."""
    import uvicorn

    from nla_tui.cli import main
    from tests._support_engine import reusing_demo_loads
    from tests._support_server import free_port

    monkeypatch.setenv("NLA_TUI_CONFIG", str(tmp_path))
    answers = {}

    def serve_briefly(app, host, port, log_level):
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            assert thread.is_alive()
            time.sleep(0.05)
        token = (tmp_path / "server-token").read_text().strip()
        answers["info"] = httpx.get(f"http://{host}:{port}/v1/info", headers={"authorization": f"Bearer {token}"})
        answers["refused"] = httpx.get(f"http://{host}:{port}/v1/info")
        server.should_exit = True
        thread.join(10)

    monkeypatch.setattr(uvicorn, "run", serve_briefly)
    port = free_port()
    with reusing_demo_loads(demo_tokenizer, demo_paths, demo_engine, ("subject", "av", "ar")):
        assert main(["serve", "--preset", "demo", "--device", "cpu", "--quant", "fp32", "--port", str(port)]) == 0
    err = capsys.readouterr().err
    assert f"ssh -N -L {port}:127.0.0.1:{port}" in err and str(tmp_path / "server-token") in err
    assert stat.S_IMODE(os.stat(tmp_path / "server-token").st_mode) == 0o600
    assert answers["info"].json()["models"]["layer"] == 12 and answers["refused"].status_code == 401


def test_steer_by_a_minus_b_over_http_equals_the_same_vector_from_a_file_in_process(served, client, conv, tmp_path):
    """POST /v1/steer {diff: [a, b]} (NlaClient.steer(source=TokenDifference)) and Nla.steer with
    that difference saved to a file: the same vector added, the same continuation; the sources
    that read a file are refused over HTTP, a bad diff with one line."""
    from nla_tui.core.errors import InputError
    from nla_tui.core.steer_sources import FileVector, TokenDifference

    url, nla = served
    france = next(t.index for t in conv.tokens if t.text == " France")
    acts = nla.activations(conv.handle, [france, france - 2])
    np.save(tmp_path / "d.npy", acts[0] - acts[1])
    over_http = client.steer(conv, france, source=TokenDifference(france, france - 2), alpha=1.0, max_new_tokens=4)
    local = nla.steer(conv.handle, france, source=FileVector(str(tmp_path / "d.npy")), alpha=1.0, max_new_tokens=4)
    assert over_http.steered_ids == local.steered_ids and over_http.vector_norm == local.vector_norm
    assert [c.token_id for c in over_http.after] == [c.token_id for c in local.after]
    assert over_http.source["kind"] == "difference" and local.source["kind"] == "file"
    with pytest.raises(InputError, match="read on this machine"):
        client.steer(conv, france, source=FileVector(str(tmp_path / "d.npy")))
    post = lambda **body: httpx.post(url + "/v1/steer", headers=AUTH, json={"handle": conv.handle, "index": 3,  # noqa: E731
                                                                              **body})
    assert "either edited" in refusal(post(edited="x", diff=[1, 2]), 422)
    assert "either edited" in refusal(post(), 422)
    assert "out of range" in refusal(post(diff=[1, 10_000]), 400)
    with pytest.raises(InputError, match="d_model="):
        np.save(tmp_path / "short.npy", np.ones(3, np.float32))
        nla.steer(conv.handle, france, source=FileVector(str(tmp_path / "short.npy")))
