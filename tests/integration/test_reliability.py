"""Issue 10, "nothing lost, nothing injected": one reproduction per defect found by
probing (each failed on the code before the fix). docs/RELIABILITY.md maps every
promise to the tests here and in test_reliability_fuzz.py / test_reliability_ui.py.

Fast cases call `cli.main` in-process (it returns the exit code and prints the
one-paragraph error; any other exception is a traceback and fails the test). Cases
that must prove nothing loaded before failing patch Engine.load to explode.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from nla_tui import cli
from nla_tui.core.errors import CheckpointError, InputError
from nla_tui.core.store.export import export_session, to_html, to_json, to_markdown
from nla_tui.core.store.session import load_session, save_session
from nla_tui.core.types import Explanation, Message, Sampling, Score
from tests._support_engine import reusing_demo_loads
from tests._support_session import REAL_SESSION, make_session

from tests._support_reliability import (REPO, INJECT, MARKUP, snapshot, main, no_load, clone_ckpt, write_value_head, strict_json)  # noqa: F401 (no_load is a fixture)


def test_1_out_refuses_a_non_empty_folder_or_an_existing_session(tmp_path, capsys, no_load):
    u = tmp_path / "u"
    u.mkdir()
    (u / "activations.safetensors").write_text("x")
    (u / ".notes.txt.tmp").write_text("y")
    before = snapshot(u)
    code, _, err = main(capsys, "run", "--preset", "demo", "--prompt", "Hi", "--max-new-tokens", "4",
                        "--explain", "3", "--out", str(u))
    assert code == 2 and "not empty" in err and "--force" in err
    assert snapshot(u) == before
    s = save_session(make_session(), tmp_path / "s")
    before = snapshot(s)
    code, _, err = main(capsys, "run", "--preset", "demo", "--prompt", "Hi", "--out", str(s))
    assert code == 2 and "already holds a session" in err and snapshot(s) == before
    code, _, err = main(capsys, "run", "--preset", "demo", "--prompt", "Hi", "--out", str(s / "session.json"))
    assert code == 2 and "is a file" in err and snapshot(s) == before


def test_1_save_deletes_only_its_own_files(tmp_path):
    u = tmp_path / "u"
    u.mkdir()
    foreign = {"activations.safetensors": b"x", ".notes.txt.tmp": b"y",
               "activations-0123456789abcdef.safetensors": b"not ours",
               ".session.json.1.deadbeef.tmp.bak": b"z"}
    for name, data in foreign.items():
        (u / name).write_bytes(data)
    first = make_session(seed=1)
    save_session(first, u)  # what `run --out u --force` does
    old_acts = json.loads((u / "session.json").read_text())["activations_file"]
    # A writer killed mid-save leaves its temp file and an unreferenced activations file.
    dead_pid = 2 ** 22 + 12345
    (u / f".session.json.{dead_pid}.0badf00d.tmp").write_bytes(b"{")
    orphan = make_session(seed=2)
    save_session(orphan, tmp_path / "o")
    orphan_name = json.loads((tmp_path / "o" / "session.json").read_text())["activations_file"]
    shutil.copy(tmp_path / "o" / orphan_name, u / orphan_name)
    save_session(make_session(seed=3), u)
    names = {p.name for p in u.iterdir()}
    assert all((u / n).read_bytes() == d for n, d in foreign.items())  # every foreign file kept
    assert old_acts not in names and orphan_name not in names  # our own leftovers gone
    assert not any(n.startswith(".session.json.") and n.endswith(".tmp") for n in names)
    assert load_session(u).activations.shape == (15, 16)


def test_1_export_refuses_to_write_over_a_session(tmp_path, capsys):
    s = save_session(make_session(), tmp_path / "s")
    before = snapshot(s)
    acts = json.loads((s / "session.json").read_text())["activations_file"]
    for target in (s / "session.json", s / acts, s):
        code, _, err = main(capsys, "export", str(s), "--format", "md", "--out", str(target))
        assert code == 2 and ("session file" in err or "is a folder" in err), err
    assert snapshot(s) == before


def test_1_force_replaces_a_session_and_keeps_foreign_files(demo_paths, demo_tokenizer, demo_engine, tmp_path,
                                                            capsys):
    out = tmp_path / "s"
    save_session(make_session(), out)
    (out / "notes.txt").write_text("mine")
    # --subject DIR with --preset demo (item 8): the user's directory keeps its own name.
    # In-process, Engine.load given the demo weights and tokenizer already in memory
    # (tests/_support_engine.py); the command's own process is test_core_cli_worker's.
    with reusing_demo_loads(demo_tokenizer, demo_paths, demo_engine, models=("subject", "av", "ar")):
        code, _, err = main(capsys, "run", "--preset", "demo", "--prompt", "Hi", "--subject",
                            str(demo_paths["subject"]), "--max-new-tokens", "3", "--explain", "none",
                            "--out", str(out), "--force")
    assert code == 0, err[-2000:]
    assert (out / "notes.txt").read_text() == "mine"
    s = load_session(out)
    assert s.info.d_model == 640 and s.messages[0].content == "Hi"
    assert s.info.subject == str(demo_paths["subject"]) and s.info.av == "demo:av"
    assert len(list(out.glob("activations-*.safetensors"))) == 1


# ------------------------------------------------------------------ 2. cache keys follow every weight file


def test_2_checkpoint_revision_follows_value_head_and_same_size_rewrites(demo_paths, tmp_path):
    from nla_tui.core.models.loading import resolve_checkpoint

    ar = clone_ckpt(demo_paths["ar"], tmp_path / "ar", copy=("value_head.safetensors",))
    vh = ar / "value_head.safetensors"
    rev0 = resolve_checkpoint(ar).revision
    st = vh.stat()
    write_value_head(vh, -np.eye(640))  # same size, same name
    os.utime(vh, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old mtime
    assert vh.stat().st_size == st.st_size
    rev1 = resolve_checkpoint(ar).revision
    assert rev1 != rev0
    # A big weights file rewritten in place, same size (a fine-tune saved over it).
    big = tmp_path / "big"
    big.mkdir()
    (big / "config.json").write_text("{}")
    w = big / "model.safetensors"
    w.write_bytes(os.urandom(8 << 20))
    r0 = resolve_checkpoint(big).revision
    w.write_bytes(os.urandom(8 << 20))
    assert resolve_checkpoint(big).revision != r0


def test_2_cached_scores_do_not_survive_a_value_head_change(demo_engine, demo_paths, tmp_path):
    """The issue's repro: score with a wrong head, restore the right head, explain again.
    The demo engine's subject and AV are reused (memory: the suite shares 2 cores and
    little RAM); the AR, its revision and the on-disk cache are the real code path."""
    from dataclasses import replace

    from nla_tui.core.nla.ar import Reconstructor
    from nla_tui.core.options import EngineOptions
    from nla_tui.core.runtime.engine import Engine
    from nla_tui.core.models.loading import resolve_checkpoint
    from nla_tui.core.nla.sidecar import read_sidecar

    ar = clone_ckpt(demo_paths["ar"], tmp_path / "ar", copy=("value_head.safetensors",))
    write_value_head(ar / "value_head.safetensors", -np.eye(640))  # wrong head: cos flips sign

    def score():
        eng = Engine(EngineOptions(preset="demo", ar=str(ar), cache=True, cache_dir=str(tmp_path / "cache")))
        eng.subject, eng.av = demo_engine.subject, demo_engine.av
        eng.ar = Reconstructor(demo_engine.ar.model, demo_engine.ar.tok, read_sidecar(ar), ar, None)
        rev = dict(demo_engine.info.revision, ar=resolve_checkpoint(ar).revision)  # what load() records
        eng.info = replace(demo_engine.info, ar=str(ar), revision=rev)
        eng.tokens, eng.activations = demo_engine.tokens, demo_engine.activations
        return eng.explain([6], Sampling(max_new_tokens=6))[0].score.cos

    wrong = score()
    write_value_head(ar / "value_head.safetensors", np.eye(640))  # the right (identity) head
    right = score()
    assert wrong == pytest.approx(-right, abs=1e-3) and right > 0


# ------------------------------------------------------------------ 3. non-finite numbers


@pytest.mark.parametrize("field, value", [("extraction.injection_scale", float("nan")),
                                          ("extraction.mse_scale", float("inf")),
                                          ("fve_variance", float("nan")),
                                          ("extraction.injection_scale", 0)])
def test_3_non_finite_sidecar_numbers_are_refused(demo_paths, tmp_path, capsys, field, value):
    def edit(meta):
        d, keys = meta, field.split(".")
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    role = "ar" if field == "extraction.mse_scale" else "av"
    ck = clone_ckpt(demo_paths[role], tmp_path / role, edit)
    with pytest.raises(CheckpointError, match="finite number above 0"):
        from nla_tui.core.nla.sidecar import read_sidecar
        read_sidecar(ck)
    code, _, err = main(capsys, "check", "--preset", "demo", f"--{role}", str(ck))
    assert code == 2 and "finite number above 0" in err


def test_3_nan_value_head_is_refused_at_load(demo_engine, demo_paths, tmp_path):
    from nla_tui.core.nla.ar import Reconstructor
    from nla_tui.core.nla.sidecar import read_sidecar

    ar = clone_ckpt(demo_paths["ar"], tmp_path / "ar", copy=("value_head.safetensors",))
    w = np.eye(640)
    w[3, 5] = np.nan
    write_value_head(ar / "value_head.safetensors", w)
    with pytest.raises(CheckpointError, match="non-finite"):
        Reconstructor(demo_engine.ar.model, demo_engine.ar.tok, read_sidecar(ar), ar, None)


def test_3_a_non_finite_score_is_unscored_not_nan(demo_engine, demo_paths):
    from nla_tui.core.nla.ar import Reconstructor
    from nla_tui.core.nla.sidecar import read_sidecar

    rec = Reconstructor(demo_engine.ar.model, demo_engine.ar.tok, read_sidecar(demo_paths["ar"]),
                        demo_paths["ar"], None)
    rec.value_head.weight.data[0, 0] = float("nan")  # a numerical blow-up at run time
    scores = rec.score(["a dog"], demo_engine.activations[3:4])
    assert scores == [None]


def test_3_json_never_holds_nan(tmp_path, caplog):
    s = make_session()
    s.explanations[1].score = Score(cos=float("nan"), mse_nrm=float("inf"), fve_nrm=None)
    s.tokens[2].norm = float("nan")
    d = save_session(s, tmp_path / "s")
    doc = strict_json((d / "session.json").read_text())
    assert doc["explanations"][1]["score"]["cos"] is None and doc["tokens"][2]["norm"] is None
    assert "non-finite" in caplog.text
    back = load_session(d)
    assert back.explanations[1].score is None and math.isnan(back.tokens[2].norm)
    strict_json(to_json(s))
    page = to_html(s)
    data = page.split('type="application/json">', 1)[1].split("</script>", 1)[0]
    strict_json(data)


# ------------------------------------------------------------------ 4. the HTML export's script JSON


def _hostile_session():
    s = make_session()
    s.name = MARKUP
    for t in s.tokens:
        t.text = MARKUP
        for c in t.top:
            c.text = MARKUP
    for e in s.explanations:
        e.text, e.raw, e.warnings, e.prompt = MARKUP, MARKUP, [MARKUP], MARKUP
    s.messages = [Message("user", MARKUP), Message("assistant", MARKUP)]
    return s


def test_4_html_script_json_survives_markup_in_every_field():
    s = _hostile_session()
    page = to_html(s)
    start = page.index('<script id="nla-data" type="application/json">') + len(
        '<script id="nla-data" type="application/json">')
    end = page.index("</script>", start)
    data = json.loads(page[start:end])  # was `<\!--`: not JSON at all
    assert data["tokens"][0]["text"] == MARKUP
    assert data["explanations"][str(s.explanations[0].index)][0]["text"] == MARKUP
    script = page[start:end]
    assert "<" not in script and ">" not in script and "\u2028" not in script
    assert page.count("</script>") == 2 and page.count("<script") == 2


# ------------------------------------------------------------------ 5. no control character reaches the terminal


def test_5_markdown_export_to_stdout_shows_control_characters(tmp_path, capsys):
    s = make_session()
    s.name = "evil" + INJECT
    s.tokens[3].text = INJECT
    s.explanations[0].text = "text" + INJECT
    s.messages = [Message("user", "hi" + INJECT + "<script>x</script>"), Message("assistant", "ok")]
    d = save_session(s, tmp_path / "s")
    code, out, _ = main(capsys, "export", str(d), "--format", "md")
    assert code == 0 and "␛\\]0;T␇␛\\[2J" in out  # visible, and Markdown-escaped
    assert not any(ch in out for ch in "\x1b\x07\x9b")
    assert "<script>" not in out and "\\<script\\>" in out  # shown as text, never a tag
    code, out, _ = main(capsys, "export", str(d), "--format", "json")
    assert code == 0 and not any(ch in out for ch in "\x1b\x07\x9b")
    assert json.loads(out)["name"] == s.name  # still the exact text, escaped as JSON


def test_5_cli_table_and_errors_show_control_characters(capsys):
    from nla_tui.core.types import TokenInfo

    class Fake:
        tokens = [TokenInfo(0, 1, "a" + INJECT, "user", 0, 1.0, [])]
    from nla_tui.cli.run import print_table

    print_table(Fake(), {0: Explanation(0, "x" + INJECT, "", Sampling())})
    out = capsys.readouterr().out
    assert "␛" in out and "\x1b" not in out and "\x07" not in out
    code, _, err = main(capsys, "export", "/nonexistent/" + INJECT)
    assert code == 2 and "\x1b" not in err and "␛" in err


# ------------------------------------------------------------------ 6. tracebacks instead of the promised error
