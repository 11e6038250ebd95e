"""Sessions: bit-exact round trips, crash safety, corrupt files reported and left alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from nla_tui.core.errors import InputError, NlaError
from nla_tui.core.store.session import (SCHEMA_VERSION, delete_session, list_sessions, load_session,
                                  rename_session, save_session)
from tests._support_session import make_session
from tests._support_paths import REPO



def assert_same(a, b) -> None:
    assert a.name == b.name and a.created == b.created
    assert a.info == b.info
    assert a.messages == b.messages
    assert a.tokens == b.tokens
    assert a.explanations == b.explanations
    assert a.activations.dtype == np.float32 == b.activations.dtype
    assert a.activations.tobytes() == b.activations.tobytes()  # bit-exact, -0.0 and denormals too


def test_round_trip_preserves_everything(tmp_path):
    s = make_session(n_tokens=40, d_model=32)
    save_session(s, tmp_path / "s")
    back = load_session(tmp_path / "s")
    assert_same(s, back)
    assert back.updated == s.updated
    # session.json itself also loads, and carries the documented fields
    doc = json.loads((tmp_path / "s" / "session.json").read_text())
    assert doc["schema_version"] == SCHEMA_VERSION
    assert (tmp_path / "s" / doc["activations_file"]).is_file()
    assert_same(s, load_session(tmp_path / "s" / "session.json"))


@pytest.mark.slow
def test_round_trip_of_a_real_engine_session(tmp_path, demo_engine):
    """A conversation the real subject produced (demo preset), explained by the real AV."""
    from nla_tui.core.runtime.engine_caches import EngineCaches
    from nla_tui.core.store.session import session_from_engine
    from nla_tui.core.types import Message, Sampling

    engine = demo_engine
    engine.caches = EngineCaches(tmp_path / "cache", enabled=True)  # put back by keep_demo_engine_state
    engine.set_conversation([Message("user", "Name a colour."), Message("assistant", "Blue.")])
    explanations = engine.explain([len(engine.tokens) - 3], sampling=Sampling(max_new_tokens=12))
    s = session_from_engine(engine, "real", explanations)
    save_session(s, tmp_path / "real")
    back = load_session(tmp_path / "real")
    assert_same(s, back)
    assert back.activations.tobytes() == np.asarray(engine.activations, np.float32).tobytes()
    assert back.explanations[0].score is not None and back.info.d_model == back.activations.shape[1]


def test_unchanged_activations_are_not_rewritten_and_old_ones_are_cleaned(tmp_path):
    s = make_session()
    d = save_session(s, tmp_path / "s")
    acts1 = [p for p in d.iterdir() if p.name.startswith("activations")]
    ino = acts1[0].stat().st_ino
    s.explanations = s.explanations[:1]
    save_session(s, d)  # autosave after an explain: same activations
    assert [p.stat().st_ino for p in d.iterdir() if p.name.startswith("activations")] == [ino]
    s.activations = s.activations + 1
    save_session(s, d)
    acts3 = [p.name for p in d.iterdir() if p.name.startswith("activations")]
    assert len(acts3) == 1 and acts3 != [acts1[0].name]
    assert load_session(d).activations.tobytes() == s.activations.tobytes()


def test_truncated_session_json_is_reported_and_left_untouched(tmp_path):
    d = save_session(make_session(), tmp_path / "s")
    path = d / "session.json"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    before = path.read_bytes()
    with pytest.raises(InputError, match="corrupted or truncated") as err:
        load_session(d)
    assert str(path) in str(err.value)
    # An autosave onto the broken file must refuse too, not replace the user's data.
    with pytest.raises(InputError, match="Refusing to save over"):
        save_session(make_session(seed=1), d)
    assert path.read_bytes() == before


def test_corrupt_or_missing_activations_are_reported(tmp_path):
    d = save_session(make_session(n_tokens=30, d_model=64), tmp_path / "s")
    apath = next(p for p in d.iterdir() if p.name.startswith("activations"))
    data = bytearray(apath.read_bytes())
    data[-10] ^= 0xFF  # a flipped bit in the tensor data: only the checksum sees it
    apath.write_bytes(bytes(data))
    with pytest.raises(InputError, match="checksum"):
        load_session(d)
    apath.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(InputError, match="corrupted or truncated"):
        load_session(d)
    apath.unlink()
    with pytest.raises(InputError, match="missing"):
        load_session(d)


def test_newer_schema_gives_a_clear_error(tmp_path):
    d = save_session(make_session(), tmp_path / "s")
    doc = json.loads((d / "session.json").read_text())
    doc["schema_version"] = SCHEMA_VERSION + 1
    (d / "session.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="newer nla-tui.*pip install -U"):
        load_session(d)


def test_version_0_file_migrates_on_load(tmp_path):
    """Pre-release layout: no schema_version, "messages", fixed activations file name."""
    s = make_session()
    d = save_session(s, tmp_path / "old")
    doc = json.loads((d / "session.json").read_text())
    apath = d / doc["activations_file"]
    os.rename(apath, d / "activations.safetensors")
    for k in ("schema_version", "name", "created", "updated", "activations_file",
              "activations_sha256"):
        doc.pop(k)
    doc["messages"] = doc.pop("conversation")
    (d / "session.json").write_text(json.dumps(doc))
    back = load_session(d)
    assert back.name == "old" and back.messages == s.messages and back.tokens == s.tokens
    assert back.activations.tobytes() == s.activations.tobytes()
    assert "schema_version" not in json.loads((d / "session.json").read_text())  # not rewritten


_SAVER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    from tests._support_session import make_session
    from nla_tui.core.store.session import save_session
    a, b = make_session(3000, 256, seed=1, name="A"), make_session(3000, 256, seed=2, name="B")
    save_session(a, {d!r})
    crash_at = {crash_at}
    if crash_at:
        # Die by SIGKILL right before the N-th filesystem step of the next save.
        calls = [0]
        def wrap(fn):
            def inner(*args, **kw):
                calls[0] += 1
                if calls[0] == crash_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                return fn(*args, **kw)
            return inner
        for name in ("fsync", "replace", "rename", "unlink"):
            setattr(os, name, wrap(getattr(os, name)))
        save_session(b, {d!r})
        print("survived", calls[0], flush=True)
    else:
        print("ready", flush=True)
        while True:
            save_session(b, {d!r}); save_session(a, {d!r})
""")


def _check_loadable(d, a, b) -> None:
    back = load_session(d)
    assert_same(a if back.name == "A" else b, back)


def test_kill_9_at_every_step_of_a_save_leaves_a_loadable_session(tmp_path):
    a, b = make_session(3000, 256, seed=1, name="A"), make_session(3000, 256, seed=2, name="B")
    for crash_at in range(1, 30):
        d = str(tmp_path / f"s{crash_at}")
        out = subprocess.run([sys.executable, "-c", _SAVER.format(repo=str(REPO), d=d,
                                                                 crash_at=crash_at)],
                             capture_output=True, text=True, timeout=120)
        _check_loadable(d, a, b)
        if out.returncode == 0:  # crash_at is past the last step: every step was covered
            assert out.stdout.startswith("survived")
            assert load_session(d).name == "B"
            break
        assert out.returncode == -signal.SIGKILL, out.stderr
    else:
        pytest.fail("save_session took more than 30 filesystem steps")


def test_kill_9_at_random_moments_while_saving(tmp_path):
    d = str(tmp_path / "s")
    a, b = make_session(3000, 256, seed=1, name="A"), make_session(3000, 256, seed=2, name="B")
    for delay in (0.05, 0.2, 0.45):
        proc = subprocess.Popen([sys.executable, "-c", _SAVER.format(repo=str(REPO), d=d,
                                                                    crash_at=0)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _check_loadable(d, a, b)


_FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    sys.path.insert(0, {repo!r})
    from tests._support_session import make_session
    from nla_tui.core.errors import NlaError
    from nla_tui.core.store.session import save_session
    # A real kernel write failure: files may not grow past 64 KiB (EFBIG, like ENOSPC).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
    try:
        save_session(make_session(400, 256, seed=9, name="big"), {d!r})
    except NlaError as e:
        print("NlaError:", e)
""")


def test_full_disk_during_save_keeps_the_previous_save(tmp_path):
    s = make_session(name="small")
    d = save_session(s, tmp_path / "s")
    out = subprocess.run([sys.executable, "-c", _FULL_DISK.format(repo=str(REPO), d=str(d))],
                         capture_output=True, text=True, timeout=120)
    assert "NlaError: Could not save session" in out.stdout, out.stdout + out.stderr
    assert "previous save" in out.stdout
    assert_same(s, load_session(d))
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]


def test_list_rename_delete(tmp_path):
    save_session(make_session(name="first", n_explained=2), tmp_path / "first")
    time.sleep(1.1)  # ISO dates have second resolution; the browser sorts newest first
    save_session(make_session(name="second", n_tokens=20), tmp_path / "second")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "session.json").write_text("{\"schema_version\": 1, \"na")
    (tmp_path / "not-a-session").mkdir()
    rows = list_sessions(tmp_path)
    assert [r.name for r in rows if r.error is None] == ["second", "first"]
    assert rows[0].n_tokens == 20 and rows[0].preset == "demo"
    assert [r.n_explained for r in rows if r.name == "first"] == [2]
    broken = [r for r in rows if r.error]
    assert len(broken) == 1 and "corrupted or truncated" in broken[0].error

    new = rename_session(tmp_path / "first", "Renamed Session")
    assert new == tmp_path / "renamed-session" and load_session(new).name == "Renamed Session"

    (new / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="did not write"):
        delete_session(new)
    (new / "notes.txt").unlink()
    delete_session(new)
    assert not new.exists()
    with pytest.raises(InputError):
        delete_session(tmp_path / "not-a-session")


def test_save_rejects_mismatched_activations(tmp_path):
    s = make_session()
    s.activations = s.activations[:-1]
    with pytest.raises(InputError, match="tokens"):
        save_session(s, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_open_needs_neither_torch_nor_pickle(tmp_path):
    d = save_session(make_session(), tmp_path / "s")
    code = (f"import sys, pickle; sys.path.insert(0, {str(REPO)!r})\n"
            "pickle.loads = pickle.load = None  # any use would raise TypeError\n"
            "from nla_tui.core.store.session import load_session\n"
            "from nla_tui.core.store.export import to_html, to_markdown\n"
            f"s = load_session({str(d)!r}); to_html(s); to_markdown(s)\n"
            "bad = [m for m in ('torch', 'transformers', 'textual') if m in sys.modules]\n"
            "assert not bad, bad\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr


def test_autosaver_never_overwrites_another_session_and_keeps_errors(tmp_path):
    from nla_tui.core.store.autosave import Autosaver

    save_session(make_session(name="autosaved", seed=5), tmp_path / "autosaved")
    saver = Autosaver("autosaved", root=tmp_path)
    assert saver.save_now(None, 1) is None  # nothing to save yet
    assert saver.save_now(make_session(name="autosaved"), 1) == tmp_path / "autosaved-2"
    assert saver.save_now(make_session(name="autosaved"), 2) == tmp_path / "autosaved-2"  # same place
    assert saver.saved_change == 2
    assert load_session(tmp_path / "autosaved").activations.tobytes() == \
        make_session(seed=5).activations.tobytes()
    (tmp_path / "autosaved-2" / "session.json").write_text("{broken")
    assert saver.save_now(make_session(name="autosaved"), 3) is None
    assert isinstance(saver.last_error, InputError) and saver.saved_change == 2
