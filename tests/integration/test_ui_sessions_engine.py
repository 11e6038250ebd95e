"""Sessions in the TUI over the REAL demo engine (Gemma 3 270M on CPU): a save round
trip of what the engine captured, and `nla-tui open` then L loading the models."""

from __future__ import annotations

from nla_tui.ui.options import UiOptions

import numpy as np
import pytest

from nla_tui.core.store.session import load_session

from tests._support_ui import async_test, data_dir, make_sessions, shown_explanations, wait_until  # noqa: F401


@pytest.mark.slow
@async_test
async def test_real_engine_save_round_trip(demo_engine, data_dir):
    """The EngineWorker path: activations ride on ConversationUpdated from the real demo
    engine (Gemma 3 270M on CPU) and the saved file holds them bit-exact."""
    from nla_tui.core.types import NOISY_PREFIX
    from nla_tui.core.runtime.worker import EngineWorker
    from nla_tui.ui.app import create_app

    engine = demo_engine  # holds one captured chat turn
    app = create_app(lambda emit: EngineWorker(engine, emit), UiOptions(autosave=True))
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.state.tokens and app.state.queue_depth == 0,
                         "the engine's conversation", 900)
        index = NOISY_PREFIX + 1
        await pilot.press("home", *["right"] * index, "e")
        await wait_until(pilot, lambda: app.state.best(index) is not None
                         and app.keeper.last_saved is not None and not app.keeper.dirty,
                         "the explanation and its autosave", 900)
        path = app.keeper.last_saved
        loaded = load_session(path)
        assert np.array_equal(loaded.activations, engine.activations)
        assert [t.to_json() for t in loaded.tokens] == [t.to_json() for t in engine.tokens]
        assert [e.to_json() for e in loaded.explanations] == shown_explanations(app)
        assert loaded.explanations[0].index == index and loaded.info == engine.info


@pytest.mark.slow
@async_test
async def test_open_then_L_loads_the_models_and_explains_new_tokens(demo_engine, data_dir):
    """nla-tui open, then L: the real demo engine recaptures the recorded conversation
    (same tokens, so the recorded explanations stay) and explains an unexplained token."""
    from nla_tui.cli.open import open_options, replay_worker
    from nla_tui.core.runtime.worker import EngineWorker
    from nla_tui.ui.app import create_app

    engine = demo_engine
    built = []

    def worker_for(opts, emit):  # the shared, already loaded engine instead of a second load
        built.append(opts)
        return EngineWorker(engine, emit)

    path = make_sessions(data_dir / "sessions")["alpha"]  # 3 of 36 tokens explained
    options = open_options(path, autosave=True)
    app = create_app(replay_worker(options), options, engine_worker=worker_for)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: len(app.state.tokens) == 36 and app.state.queue_depth == 0,
                         "the session")
        await pilot.press("L")
        await wait_until(pilot, lambda: app.state.info is not None and app.state.queue_depth == 0
                         and engine.messages == load_session(path).messages,
                         "the models and the recaptured conversation", 900)
        recorded = load_session(path).info
        assert built and (built[0].preset, built[0].layer, built[0].fve_variance) == \
            (recorded.preset, recorded.layer, recorded.fve_variance)
        assert app.state.explained_count() == 3  # recorded explanations kept
        index = next(i for i in range(12, 36) if i not in app.state.explanations)
        await pilot.press("home", *["right"] * index, "e")
        await wait_until(pilot, lambda: app.state.best(index) is not None
                         and not app.keeper.dirty, "the new explanation, autosaved", 900)
        assert app.state.best(index).score is not None
    assert load_session(path).n_explained == 4  # written back to the opened session
