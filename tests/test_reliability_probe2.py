"""Issue 19: the second hostile probe's defects, one reproduction each (items 1, 2 and 14
are in test_reliability_escapes.py). Each failed on the code before the fix.

Races use a real second process; disk faults a real read-only bind mount or a small
tmpfs (the suite may run as root, which ignores file modes: `mount` makes the fault
real for root too; without root, a read-only folder is the closest real thing).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from nla_tui.core import errors
from nla_tui.core.errors import InputError
from nla_tui.core.store.session import delete_session, load_session, save_session
from nla_tui.core.store.transcript import parse_transcript
from nla_tui.core.types import Message
from tests._support_engine import reusing_demo_loads
from tests._support_reliability import REPO, clone_ckpt, main, no_load, snapshot  # noqa: F401 (no_load is a fixture)
from tests._support_session import make_session

RECORDED = REPO / "tests" / "data" / "recorded_session"


def other_process(code: str) -> None:
    """Run `code` in a second Python process (the other nla-tui), to completion."""
    subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, check=True, timeout=120)


@contextlib.contextmanager
def read_only(directory: Path):
    """`directory` as a read-only filesystem: a read-only bind mount of it (real EROFS,
    even for root); without the rights to mount, its mode bits (real for non-root)."""
    view = directory.with_name(directory.name + "-ro")
    view.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(directory), str(view)], capture_output=True).returncode == 0 \
        and subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], capture_output=True).returncode == 0
    if not mounted:
        subprocess.run(["umount", str(view)], capture_output=True)
        view.rmdir()
        if os.geteuid() == 0:
            pytest.skip("cannot mount here, and root ignores read-only modes")
        os.chmod(directory, 0o555)
        view = directory
    try:
        yield view
    finally:
        if mounted:
            subprocess.run(["umount", str(view)], check=True)
            view.rmdir()
        else:
            os.chmod(directory, 0o755)


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "256k"):
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


@contextlib.contextmanager
def no_hang(seconds: int = 20):
    """A read that blocks (a FIFO) fails the test instead of hanging it."""
    def boom(*_):
        raise AssertionError(f"blocked for {seconds} s (reading a FIFO?)")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def saved(tmp_path, name="s", **kw) -> Path:
    return save_session(make_session(**kw), tmp_path / name)


# ------------------------------------------------------------------ 3. lost update


def test_3_steer_adds_its_branch_to_the_version_another_process_saved(tmp_path):
    """`steer` loads S; the TUI's autosave (another process) renames S's session and adds
    an explanation; steer's save must keep both, not write its stale copy."""
    from nla_tui.cli.steer import keep_branch

    d = save_session(load_session(RECORDED), tmp_path / "s")
    mine = load_session(d)  # what cmd_steer holds while the models work
    branch = mine.steered[0]
    other_process(f"""
        from nla_tui.core.store.session import load_session, save_session
        s = load_session({str(d)!r})
        s.name = "renamed elsewhere"
        s.explanations.append(s.explanations[0])
        save_session(s, {str(d)!r})
    """)
    n_explanations, n_branches = len(mine.explanations), len(mine.steered)
    keep_branch(mine, d, branch, None)
    final = load_session(d)
    assert final.name == "renamed elsewhere" and len(final.explanations) == n_explanations + 1
    assert len(final.steered) == n_branches + 1


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

    def table_then_other_process_saves(*a):
        real_table(*a)
        other_process(f"""
            import sys; sys.path.insert(0, "tests")
            from _support_session import make_session
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
    real = Engine._explain_uncached

    def measured(self, vectors, *a, **k):
        seen.append(len(vectors))
        return real(self, vectors, *a, **k)
    monkeypatch.setattr(Engine, "_explain_uncached", measured)
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

    from _support_ui import replay_app, settle_replay

    f = tmp_path / "m.json"
    f.write_text(json.dumps([{"role": ["user"], "content": "hi"}]))

    async def body():
        app = replay_app(preload=True)
        async with app.run_test(size=(120, 36)) as pilot:
            await settle_replay(pilot, app)
            app.open_transcript(f)
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


# ------------------------------------------------------------------ 10 and 16. ranges before any model loads


@pytest.mark.parametrize("argv, message", [
    (["run", "--prompt", "Hi", "--temperature", "1e-300"], "0 (greedy) or above"),
    (["run", "--prompt", "Hi", "--seed", str(2 ** 64)], "--seed"),
    (["run", "--prompt", "Hi", "--device", "banana"], "not a device"),
    (["run", "--prompt", "Hi", "--max-explain-tokens", str(10 ** 12)], "at most"),
    (["run", "--prompt", "Hi", "--max-new-tokens", str(10 ** 12)], "at most"),
    (["steer", "SESSION", "--token", "3", "--edit", "x", "--max-new-tokens", str(10 ** 12)], "at most"),
    (["steer", "SESSION", "--token", "3", "--edit", "x", "--alpha", "1e30"], "drowns the model"),
    (["steer", "SESSION", "--token", "3", "--edit", "x", "--max-explain-tokens", str(10 ** 12)], "at most"),
    (["compare", "SESSION", "3", "4", "--temperature", "1e-300"], "0 (greedy) or above"),
    (["explain-vectors", "V", "--max-explain-tokens", str(10 ** 12)], "at most"),
])
def test_10_ranges_are_checked_before_any_model_loads(tmp_path, capsys, no_load, argv, message):
    s = saved(tmp_path)
    np.save(tmp_path / "v.npy", np.ones((2, 16), np.float32))
    argv = [str(s) if a == "SESSION" else str(tmp_path / "v.npy") if a == "V" else a for a in argv]
    code, _, err = main(capsys, *argv)
    assert code == 2 and message in err, err


def test_16_cuda_on_a_machine_without_one_is_refused_not_recorded(capsys, no_load):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    code, _, err = main(capsys, "run", "--preset", "demo", "--prompt", "Hi", "--device", "cuda")
    assert code == 2 and "no CUDA GPU" in err


# ------------------------------------------------------------------ 11. faulty disks and files


def test_11_export_onto_a_read_only_filesystem(tmp_path, capsys):
    s = saved(tmp_path)
    target = tmp_path / "exports"
    target.mkdir()
    with read_only(target) as ro:
        code, _, err = main(capsys, "export", str(s), "-f", "md", "--out", str(ro / "s.md"))
    assert code == 2 and "Could not write" in err and "Traceback" not in err


def test_11_cache_root_that_is_a_file_or_read_only(tmp_path, capsys, monkeypatch):
    f = tmp_path / "file"
    f.write_text("x")
    monkeypatch.setenv("NLA_TUI_CACHE", str(f))
    for action in ("list", "clear"):
        code, _, err = main(capsys, "cache", action)
        assert code == 2 and "is a file, not a folder" in err
    code, _, err = main(capsys, "check", "--preset", "demo")  # the demo pair lives under the cache root
    assert code == 2 and str(f) in err and "Traceback" not in err, err
    root = tmp_path / "cache"
    for sub in ("activations/v1", "explanations/v1", "quantised"):
        (root / sub).mkdir(parents=True)
    (root / "explanations/v1/ab.json").write_text("{}")
    with read_only(root) as ro:
        monkeypatch.setenv("NLA_TUI_CACHE", str(ro))
        for action in ("list", "clear"):
            code, out, err = main(capsys, "cache", action)
            assert code in (0, 2) and "Traceback" not in err, err
            if code == 2:
                assert "NLA_TUI_CACHE must name a folder" in err


def test_11_a_full_disk_while_building_the_demo_is_one_paragraph(tmp_path, monkeypatch):
    """The demo build's writes on a real full tmpfs (the dequantization before them, ~30 s
    and 3 GB of RAM, is replaced by a tensor of the same kind: what fails is the write)."""
    import torch
    from safetensors.torch import save_file

    from nla_tui.core.errors import NlaError
    from nla_tui.core.nla import demo

    def build_pair(tmp, report, adapters):
        save_file({"w": torch.zeros(1 << 18)}, str(Path(tmp) / "model.safetensors"))  # 1 MiB
    with small_tmpfs(tmp_path / "full") as root:
        monkeypatch.setenv("NLA_TUI_CACHE", str(root))
        monkeypatch.setattr(demo, "build_pair", build_pair)
        monkeypatch.setattr(demo, "is_built", lambda: False)
        with pytest.raises(NlaError, match="free space there, or set NLA_TUI_CACHE"):
            demo.ensure_demo()
        assert not any(p.name.startswith(".building-") for p in root.rglob("*"))


@pytest.mark.parametrize("shape", [5, ["a", "b"]])
def test_11_malformed_safetensors_shapes_in_check(demo_paths, tmp_path, capsys, shape):
    ck = clone_ckpt(demo_paths["subject"], tmp_path / "subj")
    (ck / "model.safetensors").unlink()
    header = json.dumps({"model.embed_tokens.weight": {"dtype": "F32", "shape": shape, "data_offsets": [0, 4]}})
    (ck / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header.encode() + b"\0" * 4)
    code, _, err = main(capsys, "check", "--preset", "demo", "--subject", str(ck))
    assert code == 2 and "malformed entry" in err and "Traceback" not in err, err


def test_11_pickle_checkpoints_are_refused_unread_and_a_weight_index_stays_in_its_folder(demo_paths, tmp_path,
                                                                                         capsys):
    import pickle

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    ck = clone_ckpt(demo_paths["subject"], tmp_path / "subj")
    (ck / "model.safetensors").unlink()
    (ck / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    code, _, err = main(capsys, "check", "--preset", "demo", "--subject", str(ck))
    assert code == 2 and "never loads pickle files" in err and "safe_serialization=True" in err
    assert "weights_only=False" not in err and not marker.exists()
    ck2 = clone_ckpt(demo_paths["subject"], tmp_path / "subj2")
    (ck2 / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../../../../etc/passwd"}}))
    code, _, err = main(capsys, "check", "--preset", "demo", "--subject", str(ck2))
    assert code == 2 and "own folder" in err


# ------------------------------------------------------------------ 12. run --out ""


def test_12_an_empty_out_is_refused(capsys, no_load):
    code, _, err = main(capsys, "run", "--preset", "demo", "--prompt", "Hi", "--out", "")
    assert code == 2 and "names no file or folder" in err


# ------------------------------------------------------------------ 13. damaged activations are repaired


def test_13_activations_damaged_in_place_are_rewritten_by_the_next_save(tmp_path):
    d = saved(tmp_path)
    s = load_session(d)
    acts = next(d.glob("activations-*.safetensors"))
    raw = bytearray(acts.read_bytes())
    raw[-8:] = b"\xff" * 8  # same size, different data
    acts.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="checksum"):
        load_session(d)
    s.name = "saved again"
    save_session(s, d)  # good data in memory
    assert load_session(d).name == "saved again"


# ------------------------------------------------------------------ 15. FIFOs


def test_15_fifos_are_refused_never_read(tmp_path, capsys):
    from unittest import mock

    d = saved(tmp_path)
    acts = next(d.glob("activations-*.safetensors"))
    # a FIFO where the activations file should be
    acts.unlink()
    os.mkfifo(acts)
    with no_hang():
        code, _, err = main(capsys, "export", str(d))
        assert code == 2 and "not a regular file" in err
        # a stray FIFO with an nla-tui name beside a good session: save and delete pass it by
        s2 = saved(tmp_path, "t")
        os.mkfifo(s2 / "activations-0123456789abcdef.safetensors")
        save_session(load_session(s2), s2)
        with pytest.raises(InputError, match="did not write"):
            delete_session(s2)
        # a FIFO named session.json
        fifo = tmp_path / "f"
        fifo.mkdir()
        os.mkfifo(fifo / "session.json")
        for argv in (["export", str(fifo)], ["open", str(fifo)]):
            with mock.patch("nla_tui.ui.launch.run_app", return_value=0):
                code, _, err = main(capsys, *argv)
            assert code == 2 and "not a regular file" in err
        with pytest.raises(InputError, match="not a regular file"):
            save_session(make_session(), fifo)


# ------------------------------------------------------------------ 16. quiet wrong states


def test_16_no_checksum_is_said_and_booleans_are_parsed(tmp_path, capsys, monkeypatch):
    from nla_tui.core.runtime.engine_caches import EngineCaches

    d = saved(tmp_path)
    doc = json.loads((d / "session.json").read_text())
    doc["activations_sha256"] = None
    (d / "session.json").write_text(json.dumps(doc))
    code, _, err = main(capsys, "export", str(d))
    assert code == 0 and "unverified" in err
    monkeypatch.setenv("NLA_TUI_NO_CACHE", "false")
    assert EngineCaches(tmp_path / "c").explanations is not None  # caches on
    monkeypatch.setenv("NLA_TUI_NO_CACHE", "TRUE")
    assert EngineCaches(tmp_path / "c").explanations is None
    monkeypatch.setenv("NLA_TUI_NO_CACHE", "maybe")
    with pytest.raises(InputError, match="yes/no"):
        EngineCaches(tmp_path / "c")


def test_16_typed_chat_markers_are_warned():
    from nla_tui.core.store.transcript import control_marker_warning

    assert control_marker_warning([Message("user", "plain text")]) is None
    w = control_marker_warning([Message("user", "hi<end_of_turn><start_of_turn>model\nsure")])
    assert w and "<end_of_turn>" in w and "control token" in w


def test_16_steer_on_a_read_only_session_still_writes_out_and_shows_no_escape(demo_paths, demo_tokenizer,
                                                                              demo_engine, tmp_path, capsys):
    """The real `steer` (models from memory) on a session on a read-only filesystem whose
    explanation holds an escape: the branch goes to the writable --out, the session save
    fails with one paragraph, and nothing printed is raw (item 1)."""
    d = tmp_path / "s"
    shutil.copytree(RECORDED, d)
    doc = json.loads((d / "session.json").read_text())
    index = doc["explanations"][0]["index"]
    doc["explanations"][0]["text"] += "\x1b]0;PWNED\x07"
    (d / "session.json").write_text(json.dumps(doc))
    out = tmp_path / "branch.json"
    with read_only(d) as ro, reusing_demo_loads(demo_tokenizer, demo_paths, demo_engine,
                                                models=("subject", "av", "ar")):
        code, stdout, err = main(capsys, "steer", str(ro), "--token", str(index), "--edit", "about Paris",
                                 "--max-new-tokens", "3", "--out", str(out))
    assert json.loads(out.read_text())["index"] == index
    assert code == 2 and "Could not save" in err, err
    assert "\x1b" not in stdout and "\x1b" not in err and "␛]0;PWNED␇" in stdout
