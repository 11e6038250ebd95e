"""Issue 19, items 3-9: lost updates (a real second process), `run --out` race,
explain-vectors batching, YAML alias bomb, non-string roles, the whole session schema,
JSONL. Items 10-16 are in test_reliability_faults.py, 1, 2 and 14 in
test_reliability_escapes.py. Each failed on the code before the fix."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from nla_tui.core import errors
from nla_tui.core.store.session import load_session, save_session
from nla_tui.core.store.transcript import parse_transcript
from tests._support_engine import reusing_demo_loads
from tests._support_reliability import (REPO, clone_ckpt, main, no_load, other_process, saved,  # noqa: F401
                                          snapshot)  # (no_load is a fixture)

RECORDED = REPO / "tests" / "data" / "recorded_session"


# ------------------------------------------------------------------ 3. lost update


def test_3_steer_adds_its_result_to_the_version_another_process_saved(tmp_path):
    """`steer` loads S; the TUI's autosave (another process) renames S's session and adds
    an explanation; steer's save must keep both, not write its stale copy."""
    from nla_tui.cli.steer import keep_steered

    d = save_session(load_session(RECORDED), tmp_path / "s")
    mine = load_session(d)  # what cmd_steer holds while the models work
    result = mine.steered[0]
    other_process(f"""
        from nla_tui.core.store.session import load_session, save_session
        s = load_session({str(d)!r})
        s.name = "renamed elsewhere"
        s.explanations.append(s.explanations[0])
        save_session(s, {str(d)!r})
    """)
    n_explanations, n_steered = len(mine.explanations), len(mine.steered)
    keep_steered(mine, d, result, None)
    final = load_session(d)
    assert final.name == "renamed elsewhere" and len(final.explanations) == n_explanations + 1
    assert len(final.steered) == n_steered + 1


def test_3_a_stale_copy_is_never_saved_over_a_newer_one(tmp_path):
    d = saved(tmp_path)
    mine = load_session(d)
    other_process(f"""
        from nla_tui.core.store.session import load_session, save_session
        s = load_session({str(d)!r}); s.name = "theirs"; save_session(s, {str(d)!r})
    """)
    before = snapshot(d)
    mine.name = "mine"
    with pytest.raises(errors.SessionConflict, match="changed on disk since it was loaded"):
        save_session(mine, d)
    assert snapshot(d) == before and load_session(d).name == "theirs"
    # moved away by another process (the browser's rename): not resurrected at the old path
    other_process(f"import os; os.rename({str(d)!r}, {str(tmp_path / 'moved')!r})")
    with pytest.raises(errors.SessionConflict, match="moved or deleted"):
        save_session(mine, d)
    assert not (d / "session.json").exists()


def test_3_the_tui_autosaver_refuses_to_overwrite_another_process_save(tmp_path):
    from nla_tui.core.store.autosave import Autosaver

    d = saved(tmp_path)
    opened = load_session(d)
    saver = Autosaver(opened.name, directory=d)
    saver.adopt(opened.name, d, 0, opened.generation)
    other_process(f"""
        from nla_tui.core.store.session import load_session, save_session
        s = load_session({str(d)!r}); s.name = "theirs"; save_session(s, {str(d)!r})
    """)
    assert saver.save_now(opened, 1) is None and isinstance(saver.last_error, errors.SessionConflict)
    assert load_session(d).name == "theirs"


# ------------------------------------------------------------------ 4. run --out race


def test_4_run_out_refuses_a_session_saved_into_the_folder_meanwhile(demo_paths, demo_tokenizer, demo_engine,
                                                                      tmp_path, capsys, monkeypatch):
    """The real `run --out X` (models from memory); while it explains, another process
    saves a session into X. The check of X at start passed; the save must re-check."""
    import nla_tui.cli.run as run_mod

    out = tmp_path / "x"
    real_table = run_mod.print_table

    def table_then_other_process_saves(*a, **kw):
        real_table(*a, **kw)
        other_process(f"""
            import sys; sys.path.insert(0, ".")
            from tests._support_session import make_session
            from nla_tui.core.store.session import save_session
            save_session(make_session(name="theirs"), {str(out)!r})
        """)
    monkeypatch.setattr(run_mod, "print_table", table_then_other_process_saves)
    with reusing_demo_loads(demo_tokenizer, demo_paths, demo_engine, models=("subject", "av", "ar")):
        code, _, err = main(capsys, "run", "--preset", "demo", "--prompt", "Hi", "--max-new-tokens", "2",
                            "--explain", "none", "--out", str(out))
    assert code == 2 and "not replaced" in err, err
    assert load_session(out).name == "theirs"


# ------------------------------------------------------------------ 5. explain-vectors batches


def test_5_explain_vectors_runs_the_av_in_batches(demo_paths, demo_tokenizer, demo_engine, tmp_path, capsys,
                                                  monkeypatch):
    from nla_tui.core.runtime.engine import Engine

    rows = np.random.default_rng(0).standard_normal((20, 640)).astype(np.float32) * 50
    np.save(tmp_path / "v.npy", rows)
    seen = []
    real = Engine.explain_vectors  # one AV pass (and its AR scores) per call

    def measured(self, vectors, *a, **k):
        seen.append(len(vectors))
        return real(self, vectors, *a, **k)
    monkeypatch.setattr(Engine, "explain_vectors", measured)
    with reusing_demo_loads(demo_tokenizer, demo_paths, demo_engine, models=("subject", "av", "ar")):
        code, out, err = main(capsys, "explain-vectors", str(tmp_path / "v.npy"), "--preset", "demo",
                              "--max-explain-tokens", "2", "--no-cache")
    assert code == 0, err
    assert seen == [16, 4]  # like explain-all on CPU, not one batch of 20
    assert "[explain] 16/20" in err and "[explain] 20/20" in err
    assert len([ln for ln in out.splitlines() if ln[:4].strip().isdigit()]) == 20


# ------------------------------------------------------------------ 6. YAML alias bomb


def test_6_a_yaml_alias_bomb_in_a_sidecar_is_refused_with_a_short_message(demo_paths, tmp_path, capsys):
    ck = clone_ckpt(demo_paths["av"], tmp_path / "av")
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    text = (ck / "nla_meta.yaml").read_text()
    (ck / "nla_meta.yaml").write_text("\n".join(levels) + "\n" + text.replace("role: av", "role: *a8"))
    assert (ck / "nla_meta.yaml").stat().st_size < 4096
    code, _, err = main(capsys, "check", "--preset", "demo", "--av", str(ck))
    assert code == 2 and "aliases" in err and len(err) < 1000
    from nla_tui.core.errors import brief
    nested = [[[["x"] * 9] * 9] * 9] * 9  # what such a value is, once loaded
    assert len(brief(nested)) <= 120 and len(brief(10 ** 5000)) < 40


# ------------------------------------------------------------------ 7. non-string roles


@pytest.mark.parametrize("role, message", [('["user"]', "unknown role"), ('{"r": "user"}', "unknown role"),
                                           ("9" * 5000, "not a transcript")], ids=["list", "dict", "5000 digits"])
def test_7_non_string_roles_are_one_clear_error(tmp_path, capsys, no_load, role, message):
    f = tmp_path / "m.json"
    f.write_text('[{"role": ' + role + ', "content": "hi"}]')
    code, _, err = main(capsys, "run", "--preset", "demo", "--messages", str(f))
    assert code == 2 and message in err and len(err) < 800, err


def test_7_the_tui_stays_up_after_opening_a_transcript_with_a_list_role(tmp_path):
    import asyncio

    from tests._support_ui import replay_app, settle_replay

    f = tmp_path / "m.json"
    f.write_text(json.dumps([{"role": ["user"], "content": "hi"}]))

    async def body():
        app = replay_app(preload=True)
        async with app.run_test(size=(120, 36)) as pilot:
            await settle_replay(pilot, app)
            app.inputs.open_transcript(f)
            await pilot.pause()
            assert app.is_running and any("unknown role" in n.message for n in app._notifications)
    asyncio.run(body())


# ------------------------------------------------------------------ 8. mistyped fields, whole schema


@pytest.mark.parametrize("where, value, field", [
    (("steered", 0, "index"), "5", "steered[0].index"),
    (("steered", 0, "alpha"), "x", "steered[0].alpha"),
    (("steered", 0, "original_tokens"), 5, "steered[0].original_tokens"),
    (("steered", 0, "before", 0, "prob"), "high", "steered[0].before[0].prob"),
    (("steered", 0, "span"), 5, "steered[0].span"),
    (("conversation", 1, "tool_calls"), "abc", "conversation[1].tool_calls"),
    (("conversation", 1, "tool_calls"), [5], "conversation[1].tool_calls[0]"),
])
def test_8_mistyped_fields_are_named_by_export_and_open(tmp_path, capsys, where, value, field):
    from unittest import mock

    d = tmp_path / "s"
    shutil.copytree(RECORDED, d)
    doc = json.loads((d / "session.json").read_text())
    node = doc
    for k in where[:-1]:
        node = node[k]
    node[where[-1]] = value
    (d / "session.json").write_text(json.dumps(doc))
    for argv in (["export", str(d), "-f", "md"], ["export", str(d), "-f", "html"], ["export", str(d), "-f", "json"],
                 ["open", str(d)]):
        with mock.patch("nla_tui.ui.launch.run_app", return_value=0):
            code, _, err = main(capsys, *argv)
        assert code == 2 and field in err and "Traceback" not in err, (argv, err)


# ------------------------------------------------------------------ 9. JSONL with U+2028


def test_9_jsonl_with_raw_line_separators_inside_strings():
    text = "\n".join(json.dumps(m, ensure_ascii=False) for m in (
        {"role": "user", "content": "one\u2028two"}, {"role": "assistant", "content": "three\u0085four\u2029"}))
    msgs = parse_transcript(text)
    assert [m.content for m in msgs] == ["one\u2028two", "three\u0085four\u2029"]


