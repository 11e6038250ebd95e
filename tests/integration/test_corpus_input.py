"""`nla-tui sweep`: the whole input is checked before any model loads (no weights here)."""

from __future__ import annotations

import json

import pytest

from nla_tui.core.corpus.reader import read_corpus
from nla_tui.core.corpus.selection import make_selection, select_positions
from nla_tui.core.errors import InputError
from tests._support_cli import cli_main as _main

CONV = [{"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris is the capital of France."}]


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any weight load fails the test: these refusals must come first."""
    from nla_tui.core.runtime import engine

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the input was refused")
    monkeypatch.setattr(engine.Engine, "load", refuse)


def _jsonl(path, objs, raw_lines=()):
    lines = [json.dumps(o) for o in objs]
    for n, text in raw_lines:
        lines.insert(n, text)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_every_input_shape_reads_to_the_same_conversation(tmp_path):
    pa = pytest.importorskip("pyarrow")  # the [corpus] extra (installed by [test])
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

    (tmp_path / "list.json").write_text(json.dumps(CONV))
    (tmp_path / "wrapped.json").write_text(json.dumps({"messages": CONV}))
    _jsonl(tmp_path / "per_message.jsonl", CONV)
    _jsonl(tmp_path / "per_conv.jsonl", [{"id": "a", "messages": CONV}, CONV])
    table = pa.table({"id": ["p0"], "messages": [CONV]})
    pq.write_table(table, tmp_path / "t.parquet")
    pq.write_table(pa.table({"messages": [json.dumps(CONV)]}), tmp_path / "s.parquet")
    ds = tmp_path / "ds"
    ds.mkdir()
    with ipc.new_stream(ds / "data-00000-of-00001.arrow", table.schema) as w:
        w.write_table(table)
    (ds / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    read = {name: read_corpus(tmp_path / name) for name in
            ("list.json", "wrapped.json", "per_message.jsonl", "per_conv.jsonl", "t.parquet", "s.parquet", "ds")}
    for name, corpus in read.items():
        for c in corpus.conversations:
            assert [m.to_json() for m in c.messages] == CONV, name
    assert [c.id for c in read["per_conv.jsonl"].conversations] == ["a", "per_conv.jsonl:2"]
    assert [c.id for c in read["ds"].conversations] == ["p0"]
    assert read["list.json"].digest != read["wrapped.json"].digest


@pytest.mark.parametrize("setup, message", [
    ("mixed_lines", "line 3: mixed formats"),
    ("malformed_middle", "line 2: not valid JSON"),
    ("empty", "the file is empty"),
    ("unknown_role", "line 3, message 0: unknown role 'wizard'"),
    ("mixed_files", "mixes formats"),
])
def test_bad_input_refused_before_loading_with_its_line(tmp_path, capsys, no_model_loads, setup, message):
    path = tmp_path / "in.jsonl"
    if setup == "mixed_lines":
        _jsonl(path, [{"messages": CONV}, {"messages": CONV}, CONV[0]])
    elif setup == "malformed_middle":
        _jsonl(path, [{"messages": CONV}, {"messages": CONV}], raw_lines=[(1, '{"messages": [oops')])
    elif setup == "empty":
        path.write_text("\n")
    elif setup == "unknown_role":
        _jsonl(path, [{"messages": CONV}, {"messages": CONV}, {"messages": [{"role": "wizard", "content": "x"}]}])
    elif setup == "mixed_files":
        path = tmp_path / "dir"
        path.mkdir()
        (path / "a.json").write_text(json.dumps(CONV))
        (path / "b.parquet").write_bytes(b"PAR1")
    code, _, err = _main(capsys, "sweep", str(path), "--out", str(tmp_path / "o"), "--preset", "demo")
    assert code == 2 and message in err, err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


def test_every_bad_line_is_listed_at_once(tmp_path):
    path = _jsonl(tmp_path / "in.jsonl", [{"messages": CONV}], raw_lines=[(1, "nope"), (2, "{")])
    with pytest.raises(InputError) as e:
        read_corpus(path)
    assert "line 2: not valid JSON" in str(e.value) and "line 3: not valid JSON" in str(e.value)
    assert "2 problem(s)" in str(e.value)


@pytest.mark.parametrize("args, message", [
    (["--role", "wizard"], "--role 'wizard' is not a role"),
    (["--regex", "(unclosed"], "not a valid regular expression"),
    (["--every", "0"], "--every must be at least 1"),
    (["--limit", "0"], "--limit is 0"),
])
def test_bad_flags_refused_before_reading(tmp_path, capsys, no_model_loads, args, message):
    path = tmp_path / "a.json"
    path.write_text(json.dumps(CONV))
    code, _, err = _main(capsys, "sweep", str(path), "--out", str(tmp_path / "o"), "--preset", "demo", *args)
    assert code == 2 and message in err, err


def test_selection_policies_combine():
    roles = ["bos"] + ["user"] * 4 + ["special"] + ["model"] * 6
    texts = ["<bos>", "Where", " is", " Paris", "?", "<t>", "It", "'s", " in", " France", ".", "!"]
    sel = make_selection(role="assistant")
    assert select_positions(sel, texts, roles) == [6, 7, 8, 9, 10, 11]
    assert select_positions(make_selection(role="user,assistant", every=3), texts, roles) == [1, 4, 8, 11]
    assert select_positions(make_selection(role="all", regex=r"^ ?[A-Z]"), texts, roles) == [1, 3, 6, 9]
    # the neighbourhood: a token within one of " France"
    assert select_positions(make_selection(regex="France", context=1), texts, roles) == [8, 9, 10]
    assert select_positions(make_selection(role="assistant", max_per_conversation=3), texts, roles) == [6, 8, 10]
    surprises = [None, 1, 1, 1, 1, 1, 0.5, 3.0, 0.1, 2.0, 0.2, None]
    sel = make_selection(role="assistant", most_surprising=2)
    assert select_positions(sel, texts, roles, surprises) == [7, 9]
    assert len(select_positions(sel, texts, roles)) == 5  # before the capture: candidates (not the last token)


def test_dry_run_counts_without_weights(tmp_path, capsys, no_model_loads, demo_tokenizer, demo_paths):
    from tests._support_engine import reusing_demo_loads

    path = _jsonl(tmp_path / "c.jsonl", [{"messages": CONV}, {"id": "x", "messages": CONV}])
    with reusing_demo_loads(demo_tokenizer, demo_paths):
        code, _, err = _main(capsys, "sweep", str(path), "--out", str(tmp_path / "o"), "--preset", "demo",
                             "--role", "assistant", "--max-per-conversation", "3", "--dry-run", "--no-warmup")
    assert code == 0, err
    assert "conversations: 2" in err and "positions to explain: 6" in err
    assert not (tmp_path / "o").exists()
