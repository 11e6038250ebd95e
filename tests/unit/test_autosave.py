"""The one saver of the open session: background writes, renaming or deleting the open
session while a write is in flight, the latest request winning.

Deterministic: a write is held inside save_session on an Event, so "an autosave is
running" is a fact of the test, not a matter of timing."""

from __future__ import annotations

import threading

import pytest

from nla_tui.core.store import autosave
from nla_tui.core.store.autosave import Autosaver
from nla_tui.core.store.session import list_sessions, load_session
from tests._support_session import make_session


@pytest.fixture
def held(monkeypatch):
    """Once armed, the next write stops inside save_session until `release` is set."""
    real = autosave.save_session
    gate = {"started": threading.Event(), "release": threading.Event(), "armed": False}

    def save_session(session, directory, **kwargs):
        if gate["armed"]:
            gate["armed"] = False
            gate["started"].set()
            assert gate["release"].wait(60), "the test never released the held write"
        return real(session, directory, **kwargs)

    monkeypatch.setattr(autosave, "save_session", save_session)
    return gate


def _in_thread(fn, *args):
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(result=fn(*args)))
    t.start()
    return t, out


def test_renaming_the_open_session_during_an_autosave_keeps_both(tmp_path, held):
    saver = Autosaver("first", root=tmp_path)
    assert saver.save_now(make_session(name="ignored", seed=1), 1) == tmp_path / "first"
    held["armed"] = True
    saver.request(make_session(seed=2), 2)  # newer content, held mid-write
    assert held["started"].wait(60)
    t, out = _in_thread(saver.rename, "second name")
    t.join(0.2)
    assert t.is_alive()  # the rename waits for the write in flight
    held["release"].set()
    t.join(60)
    saver.wait()
    assert out["result"] == tmp_path / "second-name" == saver.directory
    assert not (tmp_path / "first").exists()  # no stale copy at the old place
    back = load_session(tmp_path / "second-name")
    assert back.name == "second name"  # the rename is not undone by the autosave
    assert back.activations.tobytes() == make_session(seed=2).activations.tobytes()  # nor its content lost
    saver.request(make_session(seed=3), 3)  # later saves follow the new directory and name
    saver.wait()
    assert [(r.name, r.path) for r in list_sessions(tmp_path)] == [("second name", tmp_path / "second-name")]
    assert saver.saved_change == 3


def test_deleting_the_open_session_during_an_autosave_does_not_bring_it_back(tmp_path, held):
    saver = Autosaver("doomed", root=tmp_path)
    saver.save_now(make_session(seed=1), 1)
    held["armed"] = True
    saver.request(make_session(seed=2), 2)
    assert held["started"].wait(60)
    saver.request(make_session(seed=3), 3)  # queued behind the held write
    t, _ = _in_thread(saver.delete, 3)
    held["release"].set()
    t.join(60)
    saver.wait()
    assert list_sessions(tmp_path) == []  # the queued save was dropped with the session
    assert saver.directory is None and saver.saved_change == 3  # nothing left to save
    assert saver.save_now(make_session(seed=4), 4) == tmp_path / "doomed"  # the next change: fresh
    assert load_session(tmp_path / "doomed").activations.tobytes() == make_session(seed=4).activations.tobytes()


def test_the_latest_request_wins_and_one_thread_writes(tmp_path, held):
    saver = Autosaver("s", root=tmp_path)
    held["armed"] = True
    saver.request(make_session(seed=1), 1)
    assert held["started"].wait(60)
    threads_before = {t.name for t in threading.enumerate()}
    for k in range(2, 6):
        saver.request(make_session(seed=k), k)
    assert sum(t.name == "nla-autosave" for t in threading.enumerate()) == 1
    assert "nla-autosave" in threads_before
    held["release"].set()
    saver.wait()
    assert saver.saved_change == 5
    assert load_session(tmp_path / "s").activations.tobytes() == make_session(seed=5).activations.tobytes()


def test_a_failed_background_save_reports_once_and_keeps_the_change_unsaved(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    errors = []
    saver = Autosaver("s", root=blocker, on_error=errors.append)
    saver.request(make_session(), 1)
    saver.wait()
    assert len(errors) == 1 and saver.last_error is errors[0] and saver.saved_change == 0
