"""Steered continuations and comparisons as data: kept in sessions (schema 2, migrated from
1), exported, diffed; and the headless commands' checks that run before any model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nla_tui.core.errors import InputError
from nla_tui.core.steer_results import Comparison, SteerResult, compare_activations, token_diff
from nla_tui.core.store.export import to_html, to_json, to_markdown
from nla_tui.core.store.session import SCHEMA_VERSION, load_session, save_session
from nla_tui.core.types import Candidate
from tests._support_session import make_session


def make_steered(index: int = 5) -> SteerResult:
    return SteerResult(
        index=index, token_text=" is", layer=6, original_explanation="about France | </b>",
        edited_explanation="about Germany", alpha=1.5, span="onward", vector_norm=12.5,
        before=[Candidate(3, " Paris", 0.6)], after=[Candidate(4, " Berlin", 0.4)],
        original_tokens=[" Paris", ".", " It"], steered_tokens=[" Berlin", ".", " It"],
        original_ids=[3, 9, 11], steered_ids=[4, 9, 11], created="2026-01-02T03:04:05+00:00")


def test_steered_round_trip_in_a_session(tmp_path):
    s = make_session()
    s.steered = [make_steered(), make_steered(7)]
    save_session(s, tmp_path / "s")
    back = load_session(tmp_path / "s")
    assert back.steered == s.steered and back.explanations == s.explanations
    doc = json.loads((tmp_path / "s" / "session.json").read_text())
    assert doc["schema_version"] == SCHEMA_VERSION and len(doc["steered"]) == 2


def test_schema_1_migrates_to_2_without_rewriting(tmp_path):
    s = make_session()
    d = save_session(s, tmp_path / "v1")
    doc = json.loads((d / "session.json").read_text())
    doc["schema_version"] = 1
    del doc["steered"]
    (d / "session.json").write_text(json.dumps(doc))
    back = load_session(d)
    assert back.steered == [] and back.tokens == s.tokens
    assert json.loads((d / "session.json").read_text())["schema_version"] == 1  # loading never writes


def test_a_steered_continuation_outside_the_tokens_is_refused(tmp_path):
    s = make_session()
    d = save_session(s, tmp_path / "s")
    doc = json.loads((d / "session.json").read_text())
    doc["steered"] = [make_steered(999).to_json()]
    (d / "session.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="steered continuation for token 999"):
        load_session(d)


def test_exports_carry_the_steered_continuations():
    s = make_session()
    s.steered = [make_steered()]
    md = to_markdown(s)
    assert "## Steered continuations" in md and "**" in md and "Berlin" in md
    assert "about France \\| \\</b\\>" in md  # a pipe cannot break the list, a tag is text
    page = to_html(s)
    assert "<mark> Berlin</mark>" in page and "&lt;/b&gt;" in page
    assert json.loads(to_json(s))["steered"][0]["edited_explanation"] == "about Germany"
    assert "Steered continuations" not in to_markdown(make_session())  # no section without any


def test_token_diff_marks_only_what_changed():
    left, right = token_diff(["a", "b", "c"], ["a", "x", "c", "d"])
    assert left == [("a", False), ("b", True), ("c", False)]
    assert right == [("a", False), ("x", True), ("c", False), ("d", True)]


def test_compare_activations_zero_and_cos():
    acts = np.array([[1, 0, 0], [1, 0, 0], [0, 2, 0]], np.float32)
    same = compare_activations(acts, 0, 0)
    assert not same.vector.any() and "with itself" in same.message and "zero vector" in same.message
    twins = compare_activations(acts, 0, 1)
    assert "identical activations" in twins.message
    c = compare_activations(acts, 0, 2, "note")
    assert c.cos == 0.0 and c.diff_norm == pytest.approx(5 ** 0.5) and c.message == "note"
    assert Comparison.from_json(json.loads(json.dumps(c.to_json()))).cos == 0.0


def test_cli_checks_run_before_any_model(tmp_path, capsys):
    from nla_tui.cli import main

    s = make_session()
    save_session(s, tmp_path / "s")
    assert main(["compare", str(tmp_path / "s"), "3", "3"]) == 2
    assert "zero vector" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "s"), "3", "99"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["steer", str(tmp_path / "s"), "--token", "99", "--edit", "x"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["steer", str(tmp_path / "s"), "--token", "3", "--edit", "  "]) == 2
    assert "empty" in capsys.readouterr().err
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert main(["explain-vectors", str(tmp_path / "obj.npy")]) == 2
    assert "unpickling" in capsys.readouterr().err
    from safetensors.numpy import save_file

    save_file({"a": np.ones((2, 4), np.float32), "b": np.ones(4, np.float32)}, str(tmp_path / "two.safetensors"))
    assert main(["explain-vectors", str(tmp_path / "two.safetensors")]) == 2
    assert "--name" in capsys.readouterr().err
    assert main(["explain-vectors", str(tmp_path / "two.safetensors"), "--name", "c"]) == 2
    assert "no tensor 'c'" in capsys.readouterr().err
