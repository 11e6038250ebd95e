"""Sessions in the TUI: ctrl+s, autosave (after jobs, on exit, on SIGTERM/SIGHUP), the
browser (ctrl+o), export (X) and `nla-tui open`.

Driven over a replay of the real recorded demo session (tests/data/recorded_session):
saving and browsing depend on what the UI holds, not on the model. NLA_TUI_DATA
points at tmp_path, so nothing touches the user's data directory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from nla_tui.ui.options import UiOptions
from pathlib import Path

import numpy as np
import pytest

from nla_tui.core import events as ev
from nla_tui.core.store.session import load_session, save_session
from nla_tui.ui.screens.dialogs import ValueDialog
from nla_tui.ui.screens.sessions import ConfirmDialog, SessionBrowser

from tests._support_ui import (RECORDED, RECORDED_PROMPT, Holder, async_test, data_dir, make_sessions,  # noqa: F401
                         replay_app, settle_replay, shown_explanations, type_message, wait_until)
from tests._support_paths import REPO



def _saved(data_dir):
    root = data_dir / "sessions"
    return sorted(root.glob("*/session.json")) if root.is_dir() else []


async def _chat(pilot, app):
    await wait_until(pilot, lambda: app.state.info is not None, "models ready")
    await type_message(pilot, RECORDED_PROMPT)
    await wait_until(pilot, lambda: app.state.reply is None and len(app.state.messages) == 2
                     and app.state.queue_depth == 0, "the replayed reply")


@async_test
async def test_ctrl_s_saves_a_session_that_loads_back_exactly(data_dir):
    recorded = load_session(RECORDED)
    app = replay_app(preload=True)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle_replay(pilot, app)
        await pilot.press("ctrl+s")
        dialog = app.screen
        assert isinstance(dialog, ValueDialog)
        field = dialog.query_one("#dialog-input")
        assert field.value.startswith("session-")  # the timestamped default name
        field.value = ""
        await pilot.press(*"Eiffel test", "enter")
        await wait_until(pilot, lambda: not isinstance(app.screen, ValueDialog), "the dialog")
        path = data_dir / "sessions" / "eiffel-test"
        assert (path / "session.json").is_file()
        loaded = load_session(path)
        assert loaded.name == "Eiffel test"
        assert [t.to_json() for t in loaded.tokens] == [t.to_json() for t in app.state.tokens]
        assert [e.to_json() for e in loaded.explanations] == shown_explanations(app)
        assert loaded.n_explained == app.state.explained_count() > 0
        assert loaded.activations.dtype == np.float32
        assert np.array_equal(loaded.activations, recorded.activations)  # bit-exact
        assert loaded.info == recorded.info
        assert [m.to_json() for m in loaded.messages] == [m.to_json() for m in recorded.messages]
        assert any("Saved" in n.message for n in app._notifications)


@async_test
async def test_autosave_after_a_job_then_on_exit(data_dir):
    holder = Holder()
    app = replay_app(holder=holder, options=UiOptions(autosave=True))
    async with app.run_test(size=(120, 36)) as pilot:
        assert _saved(data_dir) == []  # nothing to save before the first job
        await _chat(pilot, app)
        await wait_until(pilot, lambda: app.keeper.last_saved is not None, "the autosave")
        (saved,) = _saved(data_dir)
        doc = json.loads(saved.read_text())
        assert doc["name"].startswith("session-") and saved.parent.name == doc["name"]
        assert len(doc["conversation"]) == 2 and len(doc["tokens"]) == len(app.state.tokens)
        # An explain-all still running (held after 3 results): no JobFinished, so no
        # autosave yet; quitting must write those 3 results.
        holder.worker.hold_after = 3
        await pilot.press("a")
        await wait_until(pilot, lambda: app.state.explained_count() == 3, "three results")
        assert load_session(saved.parent).n_explained == 0
        shown = shown_explanations(app)
    assert [e.to_json() for e in load_session(saved.parent).explanations] == shown


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
@async_test
async def test_sigterm_and_sighup_save_then_exit(data_dir, signame):
    holder = Holder()
    app = replay_app(holder=holder, options=UiOptions(autosave=True))
    async with app.run_test(size=(120, 36)) as pilot:
        await _chat(pilot, app)
        await wait_until(pilot, lambda: app.keeper.last_saved is not None, "the autosave")
        holder.worker.hold_after = 4
        await pilot.press("a")
        await wait_until(pilot, lambda: app.state.explained_count() == 4, "four results")
        shown = shown_explanations(app)
        # Without the handler the signal would kill the test run: check it is there.
        assert app.sessions._signals_installed
        os.kill(os.getpid(), getattr(signal, signame))
        await wait_until(pilot, lambda: not app.is_running or app._exit_renderables is not None
                         or app.return_code is not None, "the app to exit")
    (saved,) = _saved(data_dir)
    assert [e.to_json() for e in load_session(saved.parent).explanations] == shown
    assert app.return_code == 128 + getattr(signal, signame)


@async_test
async def test_browser_lists_renames_and_deletes_with_confirmation(data_dir):
    paths = make_sessions(data_dir / "sessions")
    app = replay_app(preload=True)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle_replay(pilot, app)
        await pilot.press("ctrl+o")
        browser = app.screen
        assert isinstance(browser, SessionBrowser)
        rows = {s.name: s for s in browser.rows}
        assert set(rows) == {"alpha", "beta", "broken"}
        assert rows["alpha"].n_explained == 3 and rows["alpha"].n_tokens == 36
        assert rows["alpha"].preset == "demo"
        table = browser.table
        broken_row = table.get_row_at(browser.rows.index(rows["broken"]))
        assert "unreadable" in broken_row[-1] and "truncated" in broken_row[-1]
        # rename alpha
        table.move_cursor(row=browser.rows.index(rows["alpha"]))
        await pilot.press("r")
        assert isinstance(app.screen, ValueDialog)
        app.screen.query_one("#dialog-input").value = ""
        await pilot.press(*"Gamma ray", "enter")
        await wait_until(pilot, lambda: app.screen is browser, "back to the browser")
        assert not paths["alpha"].exists()
        assert load_session(data_dir / "sessions" / "gamma-ray").name == "Gamma ray"
        assert {s.name for s in browser.rows} == {"Gamma ray", "beta", "broken"}
        # delete beta: n keeps it, y deletes it
        table.move_cursor(row=[s.name for s in browser.rows].index("beta"))
        await pilot.press("d")
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("n")
        assert paths["beta"].exists() and app.screen is browser
        await pilot.press("d")
        await pilot.press("y")
        await wait_until(pilot, lambda: not paths["beta"].exists(), "the deletion")
        assert {s.name for s in browser.rows} == {"Gamma ray", "broken"}
        # an unreadable session can be deleted too
        table.move_cursor(row=[s.name for s in browser.rows].index("broken"))
        await pilot.press("d", "y")
        await wait_until(pilot, lambda: not paths["broken"].exists(), "the broken one deleted")
        await pilot.press("escape")
        assert not isinstance(app.screen, SessionBrowser)


@async_test
async def test_browser_enter_opens_a_session(data_dir):
    paths = make_sessions(data_dir / "sessions")
    holder = Holder()
    app = replay_app(holder=holder)  # a "live" worker: opening recaptures the conversation
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.state.info is not None, "models ready")
        await pilot.press("f2")
        browser = app.screen
        browser.table.move_cursor(row=[s.name for s in browser.rows].index("alpha"))
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.state.queue_depth == 0 and len(app.state.tokens) == 36,
                         "the opened session")
        job = [j for j in holder.worker.jobs_seen if isinstance(j, ev.SetConversation)][-1]
        assert [m.content for m in job.messages] == [m.content for m in
                                                     load_session(paths["alpha"]).messages]
        assert app.state.explained_count() == 3  # kept: the recaptured tokens are the same
        assert app.keeper.directory == paths["alpha"] and app.keeper.name == "alpha"
        # an unreadable one is refused with its error, the app stays up
        await pilot.press("ctrl+o")
        app.screen.table.move_cursor(row=[s.name for s in app.screen.rows].index("broken"))
        await pilot.press("enter")
        assert any("Cannot open" in n.message for n in app._notifications)


@async_test
async def test_export_writes_the_format_of_the_file_name(data_dir, tmp_path):
    app = replay_app(preload=True)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle_replay(pilot, app)
        await pilot.press("X")
        dialog = app.screen
        assert isinstance(dialog, ValueDialog)
        assert dialog.query_one("#dialog-input").value.endswith(".html")
        dialog.query_one("#dialog-input").value = str(tmp_path / "out.txt")
        await pilot.press("enter")
        assert "must end in" in str(dialog.query_one("#dialog-error").render())
        dialog.query_one("#dialog-input").value = str(tmp_path / "out.md")
        await pilot.press("enter")
        await wait_until(pilot, lambda: (tmp_path / "out.md").exists(), "the export")
        text = (tmp_path / "out.md").read_text()
        assert text.startswith("# session-") and " Eiffel" in text
        assert _saved(data_dir)  # saved first
        html_out = app.sessions.export_to(tmp_path / "page.html")
        assert html_out.read_text().startswith("<!DOCTYPE html>")


@async_test
async def test_nla_tui_open_shows_the_session_without_models(data_dir):
    from nla_tui.cli.open import open_options, replay_worker
    from nla_tui.ui.app import create_app

    def no_engine(*a, **k):
        raise AssertionError("nla-tui open must not build an Engine")

    path = make_sessions(data_dir / "sessions")["alpha"]
    options = open_options(path, autosave=True)
    app = create_app(replay_worker(options), options, engine_worker=no_engine)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: len(app.state.tokens) == 36 and app.state.queue_depth == 0,
                         "the session")
        saved = load_session(path)
        assert [t.to_json() for t in app.state.tokens] == [t.to_json() for t in saved.tokens]
        assert app.state.explained_count() == 3
        assert any("Read-only" in n.message for n in app._notifications)
        seen, real_submit = [], app.worker.submit
        app.worker.submit = lambda job: (seen.append(job), real_submit(job))[1]  # what reaches the worker
        unexplained = next(i for i in range(36) if i not in app.state.explanations)
        await pilot.press("home", *["right"] * unexplained)
        assert "press L to load the models" in app.pane.text.plain and "press e" not in app.pane.text.plain
        await pilot.press("e")
        await wait_until(pilot, lambda: sum("Read-only" in n.message for n in app._notifications) >= 2,
                         "the read-only note")
        # What needs the models is refused before any job or editor, offering L.
        explained = min(app.state.explanations)
        await pilot.press("home", *["right"] * explained, "w")
        await pilot.pause()
        assert not app.screen.is_modal  # no steer editor opened
        last = list(app._notifications)[-1].message
        assert "steering" in last and "Press L" in last
        assert not any(isinstance(j, (ev.Explain, ev.ExplainAll)) or type(j).__name__ == "Steer" for j in seen)
        before = (path / "session.json").read_bytes()
    assert (path / "session.json").read_bytes() == before  # opening never rewrites it


@pytest.mark.parametrize("case", ["truncated", "missing"])
def test_cli_open_bad_session_exits_2_with_one_clear_line(tmp_path, case):
    bad = tmp_path / "bad"
    if case == "truncated":
        save_session(load_session(RECORDED), bad)
        doc = (bad / "session.json").read_bytes()
        (bad / "session.json").write_bytes(doc[: len(doc) // 2])
    env = dict(os.environ, NLA_TUI_DATA=str(tmp_path / "data"))
    r = subprocess.run([sys.executable, "-m", "nla_tui.cli", "open", str(bad)], cwd=REPO,
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert ("corrupted or truncated" if case == "truncated" else "missing") in lines[0]


def test_browser_snapshot(snap_compare, monkeypatch, tmp_path):
    # The title shows the folder, as ~/… under the home directory: a per-test home keeps
    # the screen the same on every machine without a fixed /tmp path.
    monkeypatch.setenv("HOME", str(tmp_path))
    data = tmp_path / "nla-tui-snapshot-data"
    monkeypatch.setenv("NLA_TUI_DATA", str(data))
    paths = make_sessions(data / "sessions")
    for name, stamp in (("alpha", "2026-11-24T09:15:00+00:00"), ("beta", "2026-11-25T10:30:00+00:00")):
        jpath = paths[name] / "session.json"
        doc = json.loads(jpath.read_text())
        doc["created"] = doc["updated"] = stamp  # fixed dates; the checksum covers activations only
        jpath.write_text(json.dumps(doc))

    async def open_browser(pilot):
        await settle_replay(pilot, pilot.app)
        await pilot.press("ctrl+o")
        await pilot.pause()

    assert snap_compare(replay_app(preload=True), terminal_size=(120, 36), run_before=open_browser)


@async_test
async def test_naming_an_autosaved_session_moves_it_and_never_overwrites_another(data_dir):
    other = load_session(RECORDED)
    other.name = "Named"
    taken = save_session(other, data_dir / "sessions" / "named-2")  # not ours either
    app = replay_app(options=UiOptions(autosave=True))
    async with app.run_test(size=(120, 36)) as pilot:
        await _chat(pilot, app)
        await wait_until(pilot, lambda: app.keeper.last_saved is not None, "the autosave")
        autosaved = app.keeper.last_saved
        await pilot.press("ctrl+s")
        app.screen.query_one("#dialog-input").value = "Named"
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.keeper.name == "Named"
                         and not isinstance(app.screen, ValueDialog), "the save")
        assert not autosaved.exists()  # moved, no stale copy
        assert load_session(data_dir / "sessions" / "named").name == "Named"
        # a different session already called "Named": a suffix, never an overwrite
        app.keeper.saver.directory, app.keeper.named = None, False
        assert app.keeper.save_as("Named", data_dir / "sessions") == data_dir / "sessions" / "named-3"
        assert load_session(taken).messages == other.messages


@async_test
async def test_a_failed_autosave_is_shown_and_the_app_keeps_running(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the data directory should be")
    monkeypatch.setenv("NLA_TUI_DATA", str(blocker))
    app = replay_app(options=UiOptions(autosave=True))
    async with app.run_test(size=(120, 36)) as pilot:
        await _chat(pilot, app)
        await wait_until(pilot, lambda: app.keeper.saver.last_error is not None, "the failed save")
        await wait_until(pilot, lambda: any(n.title == "Autosave failed" for n in app._notifications),
                         "the notice")
        assert app.is_running and app.keeper.dirty
