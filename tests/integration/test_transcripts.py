"""Agent transcripts at scale: OpenAI chat format in, roles folded onto Gemma's template
and tagged per token, the context check before any model loads, chunked capture."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from nla_tui.core.errors import InputError
from nla_tui.core.store.transcript import load_transcript, parse_transcript, tool_call_text
from nla_tui.core.types import Message
from tests._support_engine import reusing_demo_loads
from tests._support_paths import DATA, REPO

AGENT = DATA / "agent_transcript.json"


def test_openai_shapes_parse_to_the_same_messages(tmp_path):
    msgs = load_transcript(AGENT)
    assert [m.role for m in msgs] == ["system", "user", "assistant", "tool", "assistant"]
    call = msgs[2].tool_calls[0]
    assert msgs[2].content == "" and call["id"] == "call_1" and call["function"]["name"] == "get_weather"
    assert msgs[3].tool_call_id == "call_1" and msgs[3].name == "get_weather"
    assert msgs[3].content.startswith('{"city": "Paris"')  # a list of text parts, joined
    # The same conversation as a bare list and as JSONL.
    raw = json.loads(AGENT.read_text())["messages"]
    assert parse_transcript(json.dumps(raw)) == msgs
    assert parse_transcript("\n".join(json.dumps(m) for m in raw) + "\n\n") == msgs
    # Older spellings: role "function", a single function_call with object arguments.
    old = parse_transcript(json.dumps([
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": {"x": 1}}},
        {"role": "function", "name": "f", "content": "2"}]))
    assert old[1].tool_calls[0]["function"]["name"] == "f" and old[2].role == "tool"
    assert tool_call_text(old[1].tool_calls[0]) == "f(x=1)"
    # Messages survive the session JSON round trip with their tool fields.
    assert [Message.from_json(m.to_json()) for m in msgs] == msgs


@pytest.mark.parametrize("doc, message", [
    ('[{"role": "robot", "content": "x"}]', "unknown role 'robot'"),
    ('[{"role": "user", "content": "a", "tool_calls": []}]', "only assistant messages carry tool_calls"),
    ('[{"role": "assistant", "content": null}]', "needs content or tool_calls"),
    ('[{"role": "assistant", "content": null, "tool_calls": [{"function": {}}]}]', "each tool call needs"),
    ('{"role": "user", "content": "a"}\n{"role": "user"', "line 2 is not a JSON object"),
    ('{"messages": []}', "non-empty JSON list"),
    ('[{"role": "user", "content": 3}]', "content must be a string"),
])
def test_bad_transcripts_say_what_is_wrong(doc, message):
    with pytest.raises(InputError, match=message):
        parse_transcript(doc)


def test_roles_fold_onto_gemmas_template_and_every_token_is_tagged(demo_tokenizer):
    from nla_tui.core.models.conversation import render, tag_tokens

    msgs = load_transcript(AGENT)
    text, _ = render(demo_tokenizer, msgs)
    # Gemma has user/model only: the system prompt opens the first user turn, the call is
    # a tool_code block in a model turn, the result a tool_output block in a user turn.
    assert text.startswith("<bos><start_of_turn>user\nYou are a careful assistant")
    assert '<start_of_turn>model\n```tool_code\nget_weather(city="Paris")\n```<end_of_turn>' in text
    assert "<start_of_turn>user\n```tool_output\n{" in text
    ids, roles, turns = tag_tokens(demo_tokenizer, msgs)
    by_role = {}
    for i, r, t in zip(ids, roles, turns):
        by_role.setdefault(r, set()).add(t)
    assert by_role["system"] == {0} and by_role["user"] == {1} and by_role["tool_call"] == {2}
    assert by_role["tool_result"] == {3} and by_role["model"] == {4}
    call = "".join(demo_tokenizer.decode([i]) for i, r in zip(ids, roles) if r == "tool_call")
    assert call == '```tool_code\nget_weather(city="Paris")\n```'


def test_round_trip_open_capture_save_export_keeps_every_role(demo_engine, tmp_path):
    from nla_tui.core.store.export import export_session
    from nla_tui.core.store.session import load_session, save_session, session_from_engine
    from nla_tui.core.types import Sampling

    progress = []
    demo_engine.set_conversation(load_transcript(AGENT), lambda d, t: progress.append((d, t)))
    assert progress[-1][0] == progress[-1][1] == len(demo_engine.tokens)
    call_at = next(t.index for t in demo_engine.tokens if t.role == "tool_call")
    exps = demo_engine.explain([call_at], Sampling(max_new_tokens=4))
    path = save_session(session_from_engine(demo_engine, "agent", exps), tmp_path / "agent")
    s = load_session(path)
    assert s.messages == load_transcript(AGENT)
    roles = {t.role for t in s.tokens}
    assert {"system", "user", "model", "tool_call", "tool_result"} <= roles
    md = export_session(s, "md", tmp_path / "a.md").read_text()
    assert "**tool (get\\_weather):**" in md and '→ get_weather(city="Paris")' in md
    assert "| tool\\_call |" in md and "| tool\\_result |" in md and "| system |" in md  # roles, markdown-escaped
    html = export_session(s, "html", tmp_path / "a.html").read_text()
    assert 'data-role="tool_call"' in html and 'data-role="tool_result"' in html
    doc = json.loads(export_session(s, "json", tmp_path / "a.json").read_text())
    assert doc["conversation"][2]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_over_the_context_fails_before_any_model_loads(demo_paths, demo_tokenizer, tmp_path, monkeypatch, capsys):
    """A transcript longer than Gemma 3 270M's 32,768 positions: one paragraph, exit 2,
    and no weights ever load (load_model would raise)."""
    import nla_tui.core.runtime.engine as engine_mod
    from nla_tui.cli import main

    def no_load(*a, **k):
        raise AssertionError("a model was loaded before the context check")

    monkeypatch.setattr(engine_mod, "load_model", no_load)
    big = tmp_path / "big.jsonl"
    big.write_text(json.dumps({"role": "user", "content": "word " * 40000}) + "\n"
                   + json.dumps({"role": "assistant", "content": "ok"}) + "\n")
    with reusing_demo_loads(demo_tokenizer, demo_paths):  # the subject's tokenizer: the session's
        assert main(["run", "--preset", "demo", "--messages", str(big), "--explain", "none"]) == 2
    err = capsys.readouterr().err
    assert "reads at most 32,768" in err and "Shorten the transcript" in err


def test_engine_refuses_a_reply_past_the_context(demo_engine):
    with pytest.raises(InputError, match="the reply may add"):
        demo_engine.chat("hi", max_new_tokens=40000)


def _blas_rows_are_independent(shapes) -> bool:
    """Whether this machine's CPU BLAS computes each row of x @ W.T the same bits whatever
    the number of rows beside it. rowexact_attention makes attention so; the projections
    and the MLP rely on the BLAS, and MKL with several threads splits the reduction of a
    long inner axis (the MLP's down projection, 2048 here) by the batch's size on some
    CPUs (seen on a 2-core AVX-512 Xeon VM; not on the one this test was written on)."""
    import torch

    g = torch.Generator().manual_seed(0)
    for k, n in shapes:
        x, w = torch.randn(560, k, generator=g), torch.randn(n, k, generator=g)
        full = torch.nn.functional.linear(x, w)
        if not all(torch.equal(full[s:e], torch.nn.functional.linear(x[s:e], w))
                   for s, e in ((0, 200), (200, 400), (400, 560))):
            return False
    return True


def test_chunked_capture_is_bit_for_bit_the_one_pass_capture(demo_engine):
    """fp32 CPU, real Gemma 3 270M, past its 512-token sliding window: chunks of 200
    over a KV cache give exactly the one-pass activations and candidates — bit for bit
    where the CPU BLAS is row-independent for the model's shapes, else to float
    rounding (the same rows, a few ulps apart; attention is still row-exact)."""
    from nla_tui.core.models.capture import chunk_bounds

    subject = demo_engine.subject
    text = (REPO / "README.md").read_text()
    ids = subject.tok(text, add_special_tokens=True)["input_ids"][:560]
    assert chunk_bounds(560, 200) == [(0, 200), (200, 400), (400, 560)]
    one = subject.capture(ids, chunk=len(ids))
    seen = []
    chunked = subject.capture(ids, chunk=200, progress=lambda d, t: seen.append(d))
    assert seen == [200, 400, 560]
    cfg = subject.model.config.get_text_config()
    shapes = [(cfg.hidden_size, cfg.intermediate_size), (cfg.intermediate_size, cfg.hidden_size),
              (cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim)]
    if _blas_rows_are_independent(shapes):
        assert np.array_equal(one.activations, chunked.activations)
        assert np.array_equal(one.top_ids, chunked.top_ids)
        assert np.array_equal(one.top_probs, chunked.top_probs)
        assert np.array_equal(one.residuals, chunked.residuals)  # the logit lens's too (issue 23)
        return
    scale = np.abs(one.activations).max()
    assert np.abs(one.activations - chunked.activations).max() <= 2e-5 * scale
    assert np.abs(one.residuals - chunked.residuals).max() <= 2e-5 * np.abs(one.residuals).max()
    assert np.abs(one.top_probs - chunked.top_probs).max() <= 1e-4
    # Candidates: the same top token everywhere (a near tie below it may swap order).
    assert np.array_equal(one.top_ids[:, 0], chunked.top_ids[:, 0])


def test_a_short_tail_joins_the_previous_chunk():
    from nla_tui.core.models.capture import MIN_CHUNK, chunk_bounds

    assert chunk_bounds(530, 256) == [(0, 256), (256, 530)]
    assert chunk_bounds(40, 256) == [(0, 40)]
    assert all(e - s >= MIN_CHUNK for s, e in chunk_bounds(1000, 10))


GEMMA3_27B = SimpleNamespace(  # google/gemma-3-27b-it text_config
    num_hidden_layers=62, num_attention_heads=32, num_key_value_heads=16, head_dim=128, hidden_size=5376,
    intermediate_size=21504, vocab_size=262208, sliding_window=1024,
    layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(62)])


def test_20k_tokens_on_the_27b_shape_fit_the_explain_all_budget():
    """The explain-all budget on an 80 GB card holding the three nf4 models (~41 GiB)
    is half the rest, ~16 GiB; chunked capture of 20,000 tokens fits well inside it,
    a one-pass forward does not."""
    from nla_tui.core.models.capture_memory import GiB, capture_bytes, chunk_for_budget

    budget = 8 * GiB
    chunk = chunk_for_budget(GEMMA3_27B, 20_000, budget)
    assert capture_bytes(GEMMA3_27B, 20_000, chunk) <= budget
    assert capture_bytes(GEMMA3_27B, 20_000, 20_000) > 16 * GiB
    with pytest.raises(InputError, match="GiB of GPU memory"):
        chunk_for_budget(GEMMA3_27B, 20_000, GiB)
