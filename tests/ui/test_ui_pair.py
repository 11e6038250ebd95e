"""The extra pair in the TUI over the recorded pair session (tests/data/pair_session, made
by `nla-tui run --extra-pair` on the demo pair and a hub-layout copy of it): the pane shows
both pairs' explanations and scores for the token under the cursor, 2 asks the worker for
the extra pair's (the same scheduler as e) and toggles its section, and a save keeps the
pair and its explanations. The replay serves what the real engine recorded; the same keys
over the real engine are in tests/integration/test_extra_pair.py."""

from __future__ import annotations

import pytest

from nla_tui.core.pair_jobs import ExplainWithPair
from nla_tui.core.store.session import load_session
from tests._support_paths import DATA
from tests._support_ui import Holder, async_test, replay_app, settle_replay, wait_until

PAIR_SESSION = DATA / "pair_session"


@async_test
async def test_the_pane_shows_both_pairs_for_the_token_under_the_cursor():
    recorded = load_session(PAIR_SESSION)
    main = {e.index: e for e in recorded.explanations}
    extra = {e.index: e for e in recorded.pair_explanations}
    app = replay_app(preload=True, session=PAIR_SESSION)
    async with app.run_test(size=(140, 60)) as pilot:
        await settle_replay(pilot, app)
        await wait_until(pilot, lambda: len(app.state.pair_explanations) == 3, "the extra pair's explanations")
        assert app.state.pair.label == "copy"
        app.strip.set_cursor(18)
        await pilot.pause()
        body = str(app.pane.render())
        head, _, tail = body.partition("extra pair [copy · layer 12]")
        assert tail, body
        assert main[18].text.strip()[:40] in head and f"cos {main[18].score.cos:.3f}" in head
        assert extra[18].text.strip()[:40] in tail and f"cos {extra[18].score.cos:.3f}" in tail
        await pilot.press("2")  # explained already: 2 hides the section, again shows it
        assert "extra pair" not in str(app.pane.render())
        await pilot.press("2")
        assert "extra pair [copy" in str(app.pane.render())
        app.strip.set_cursor(5)
        await pilot.pause()
        assert "not explained with this pair yet: press 2" in str(app.pane.render())


@async_test
async def test_2_asks_the_worker_for_the_extra_pairs_explanation_and_a_save_keeps_it(tmp_path):
    holder = Holder()
    app = replay_app(preload=True, session=PAIR_SESSION, holder=holder)
    async with app.run_test(size=(140, 60)) as pilot:
        await settle_replay(pilot, app)
        app.state.pair_explanations.pop(17)  # as if not explained yet: 2 must ask the worker
        app.strip.set_cursor(17)
        await pilot.pause()
        await pilot.press("2")
        jobs = [j for j in holder.worker.jobs_seen if isinstance(j, ExplainWithPair)]
        assert [(j.index, j.pair) for j in jobs] == [(17, "extra")]
        await wait_until(pilot, lambda: 17 in app.state.pair_explanations, "the replayed pair explanation")
        assert "writing" not in str(app.pane.render())
        session = app.sessions.keeper.snapshot()
        assert session.extra_pair.label == "copy"
        assert sorted(e.index for e in session.pair_explanations) == [17, 18, 19]


@async_test
async def test_2_without_an_extra_pair_says_how_to_load_one():
    holder = Holder()
    app = replay_app(preload=True, holder=holder)  # the recorded session has no extra pair
    async with app.run_test(size=(120, 36)) as pilot:
        await settle_replay(pilot, app)
        app.strip.set_cursor(5)
        await pilot.press("2")
        await pilot.pause()
        assert not any(isinstance(j, ExplainWithPair) for j in holder.worker.jobs_seen)
        assert any("--extra-pair" in str(n.message) for n in app._notifications)
        assert "extra pair" not in str(app.pane.render())


@pytest.mark.parametrize("on_disk", [True, False])
@async_test
async def test_L_on_an_opened_pair_session_loads_its_extra_pair_where_it_is_on_disk(tmp_path, monkeypatch, on_disk):
    """nla-tui open on a session made with --extra-pair, then L: the engine is asked for the
    session's extra pair too when its directories are on this machine; otherwise the main
    pair loads alone and the notice says why. (The engine here is a replay: what is checked
    is the options the app asks for.)"""
    import json
    import shutil

    from nla_tui.cli.open import open_options, replay_worker
    from nla_tui.core.runtime.replay import ReplayWorker
    from nla_tui.ui.app import create_app

    monkeypatch.setenv("NLA_TUI_DATA", str(tmp_path / "data"))
    session_dir = tmp_path / "s"
    shutil.copytree(PAIR_SESSION, session_dir)
    pair_dir = tmp_path / "pair"
    if on_disk:
        (pair_dir / "av").mkdir(parents=True)
        (pair_dir / "ar").mkdir()
    doc = json.loads((session_dir / "session.json").read_text())
    doc["extra_pair"]["models"].update(av=str(pair_dir / "av"), ar=str(pair_dir / "ar"))
    (session_dir / "session.json").write_text(json.dumps(doc))
    asked = []

    def engine_worker(opts, emit):
        asked.append(opts)
        return ReplayWorker(session_dir, emit, preload=True)

    options = open_options(session_dir)
    app = create_app(replay_worker(options), options, engine_worker=engine_worker)
    async with app.run_test(size=(140, 40)) as pilot:
        await settle_replay(pilot, app)
        await pilot.press("L")
        await wait_until(pilot, lambda: asked and app.state.info is not None, "the reload")
        spec = asked[0].extra_pair
        notes = " ".join(str(n.message) for n in app._notifications)
        if on_disk:
            assert (spec.av, spec.ar, spec.label) == (str(pair_dir / "av"), str(pair_dir / "ar"), "copy")
            assert "not on this machine" not in notes
        else:
            assert spec is None and "not on this machine" in notes
