"""Steer (w) and compare (c) keys, over a replay of the real recorded session and the
steered continuation / comparison recorded from the real demo engine beside it."""

from textual.widgets import Input, Label, TextArea

from nla_tui.core import events as ev
from nla_tui.core.steer_jobs import Compare, SteerProgress, Steer
from nla_tui.ui.messages import EngineEvent
from nla_tui.ui.screens.steer import CompareScreen, SteeredScreen, SteerDialog

from tests._support_ui import (COMPARE_PAIR, STEER_EDIT, STEER_TOKEN, Holder, async_test, replay_app, settle_replay,
                         wait_until)


@async_test
async def test_steer_edits_the_explanation_and_shows_the_steered_continuation():
    holder = Holder()
    app = replay_app(preload=True, holder=holder)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle_replay(pilot, app)
        app.strip.set_cursor(STEER_TOKEN)
        original = app.state.best(STEER_TOKEN).text
        await pilot.press("w")
        await wait_until(pilot, lambda: isinstance(app.screen, SteerDialog), "the editor")
        dialog = app.screen
        assert dialog.query_one(TextArea).text == original
        await pilot.press("ctrl+s")  # unchanged: refused in the dialog, nothing submitted
        assert "Change the explanation" in str(dialog.query_one("#dialog-error", Label).render())
        dialog.query_one(TextArea).load_text(STEER_EDIT)
        dialog.query_one("#steer-alpha", Input).value = "x"
        await pilot.press("ctrl+s")
        assert "α must be a number" in str(dialog.query_one("#dialog-error", Label).render())
        dialog.query_one("#steer-alpha", Input).value = "0.5"  # the recorded steer's strength
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: isinstance(app.screen, SteeredScreen), "the steered continuation")
        job = [j for j in holder.worker.jobs_seen if isinstance(j, Steer)][-1]
        assert (job.index, job.edited, job.original, job.alpha, job.span) == (
            STEER_TOKEN, STEER_EDIT, original, 0.5, "here")
        result = app.screen.result
        assert app.state.steered == [result] and result.index == STEER_TOKEN
        assert app.keeper.snapshot().steered == [result]  # saved with the session, exported with it
        await pilot.press("escape")
        assert not isinstance(app.screen, SteeredScreen)


@async_test
async def test_steer_needs_an_explanation_first():
    holder = Holder()
    app = replay_app(holder=holder)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.state.info is not None, "models ready")
        await pilot.press("w")  # no token yet
        await pilot.pause()
        assert not isinstance(app.screen, SteerDialog)
        assert not any(isinstance(j, Steer) for j in holder.worker.jobs_seen)


@async_test
async def test_compare_marks_a_then_b():
    holder = Holder()
    app = replay_app(preload=True, holder=holder)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle_replay(pilot, app)
        a, b = COMPARE_PAIR
        app.strip.set_cursor(a)
        await pilot.press("c")
        assert app.steering.compare_mark == a
        await pilot.press("escape")  # Esc clears A
        assert app.steering.compare_mark is None
        await pilot.press("c")
        app.strip.set_cursor(b)
        await pilot.press("c")
        await wait_until(pilot, lambda: isinstance(app.screen, CompareScreen), "the comparison")
        job = [j for j in holder.worker.jobs_seen if isinstance(j, Compare)][-1]
        assert (job.i, job.j) == (a, b) and app.steering.compare_mark is None
        c = app.screen.c
        assert c.a_minus_b.text and c.b_minus_a.text and c.a_minus_b.score is not None
        await pilot.press("escape")
        # the same token twice: the zero vector and the message, no explanation
        await pilot.press("c", "c")
        await wait_until(pilot, lambda: isinstance(app.screen, CompareScreen), "the self-comparison")
        assert "zero vector" in app.screen.c.message and app.screen.c.a_minus_b is None


@async_test
async def test_compare_progress_shows_what_runs_and_how_far_then_goes():
    """The worker's SteerProgress (test_steering checks the engine's counts) drives the bar
    under the strip: what the job does, how far, the time left; the job's end hides it."""
    app = replay_app(preload=True)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle_replay(pilot, app)
        bar = app.query_one("#allbar")
        assert not bar.display
        app.post_message(EngineEvent(SteerProgress("compare 3↔9: explaining a − b, b − a", 120, 400, 21.0)))
        await pilot.pause()
        assert bar.display
        assert "compare 3↔9" in str(bar.query_one("#all-label").render())
        assert "30% · 120/400 tokens · ETA 0:21" in str(bar.query_one("#all-eta").render())
        app.post_message(EngineEvent(ev.JobFinished(ev.JobKind.COMPARE)))
        await pilot.pause()
        assert not bar.display


async def _open_dialog(pilot, app, kind: str):
    from textual.widgets import RadioButton

    await settle_replay(pilot, app)
    app.strip.set_cursor(STEER_TOKEN)
    await pilot.press("w")
    await wait_until(pilot, lambda: isinstance(app.screen, SteerDialog), "the steer dialog")
    dialog = app.screen
    dialog.query_one(f"#source-{kind}", RadioButton).value = True
    await pilot.pause()
    assert dialog.kind == kind
    return dialog


def _label(dialog, selector: str) -> str:
    return str(dialog.query_one(selector, Label).render())


@async_test
async def test_the_dialog_refuses_a_malformed_vector_file_before_anything_runs(tmp_path):
    """Each bad file is named in the dialog as its path is typed and refused on ctrl+s: no
    Steer job reaches the worker. A good one shows its norm, the layer and alpha's unit."""
    import numpy as np

    d = 640  # the recorded session's d_model (Gemma 3 270M); its layer is 12
    np.save(tmp_path / "short.npy", np.ones(d - 3, np.float32))
    nan = np.ones(d, np.float32)
    nan[1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "ints.npy", np.ones(d, np.int16))
    np.save(tmp_path / "pickle.npy", np.array([object()], dtype=object), allow_pickle=True)
    (tmp_path / "text.safetensors").write_text("hello")
    good = np.zeros(d, np.float32)
    good[:4] = [3, 4, 0, 0]
    np.save(tmp_path / "good.npy", good)
    holder = Holder()
    app = replay_app(preload=True, holder=holder)
    async with app.run_test(size=(120, 36)) as pilot:
        dialog = await _open_dialog(pilot, app, "file")
        path = dialog.query_one("#steer-file", Input)
        for name, message in [("short.npy", "d_model=640"), ("nan.npy", "NaN or infinite"),
                              ("ints.npy", "floating point"), ("pickle.npy", "unpickling"),
                              ("text.safetensors", "not a readable safetensors"), ("missing.npy", "does not exist")]:
            path.value = str(tmp_path / name)
            await pilot.pause()
            assert message in _label(dialog, "#steer-vector"), name
            await pilot.press("ctrl+s")
            assert message in _label(dialog, "#dialog-error") and app.screen is dialog, name
        path.value = str(tmp_path / "good.npy")
        await pilot.pause()
        shown = _label(dialog, "#steer-vector")
        assert "‖v‖ 5" in shown and "layer 12" in shown and "median activation norm of the layer" in shown
        assert not any(isinstance(j, Steer) for j in holder.worker.jobs_seen)


@async_test
async def test_the_dialog_offers_a_minus_b_of_the_marked_token_and_the_cursor_and_an_sae(tmp_path):
    import json

    import numpy as np
    from safetensors.numpy import save_file

    holder = Holder()
    app = replay_app(preload=True, holder=holder)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle_replay(pilot, app)
        app.strip.set_cursor(COMPARE_PAIR[1])
        await pilot.press("c")  # marks token A
        dialog = await _open_dialog(pilot, app, "difference")
        assert (dialog.query_one("#steer-a", Input).value, dialog.query_one("#steer-b", Input).value) == (
            str(COMPARE_PAIR[1]), str(STEER_TOKEN))
        acts = app.state.activations
        norm = np.linalg.norm(acts[COMPARE_PAIR[1]].astype(np.float64) - acts[STEER_TOKEN].astype(np.float64))
        assert f"‖v‖ {norm:.1f}" in _label(dialog, "#steer-vector")
        dialog.query_one("#steer-b", Input).value = str(COMPARE_PAIR[1])
        await pilot.pause()
        assert "zero vector" in _label(dialog, "#steer-vector")

        sae = tmp_path / "sae"
        sae.mkdir()
        (sae / "cfg.json").write_text(json.dumps({"d_in": 640, "d_sae": 3, "hook_name": "blocks.7.hook_resid_post"}))
        save_file({"W_dec": np.ones((3, 640), np.float32)}, str(sae / "sae_weights.safetensors"))
        from textual.widgets import Checkbox, RadioButton

        dialog.query_one("#source-sae", RadioButton).value = True
        dialog.query_one("#steer-sae", Input).value = str(sae)
        dialog.query_one("#steer-feature", Input).value = "2"
        await pilot.pause()
        assert "reads layer 7" in _label(dialog, "#steer-vector") and "act on layer 12" in _label(dialog, "#steer-vector")
        dialog.query_one("#steer-any-layer", Checkbox).value = True
        await pilot.pause()
        assert "‖v‖ 25.3" in _label(dialog, "#steer-vector") and "steered at layer 12 anyway" in _label(
            dialog, "#steer-vector")
        await pilot.press("ctrl+s")  # the replay has no such recording: the job went, its failure is shown
        await wait_until(pilot, lambda: any(isinstance(j, Steer) for j in holder.worker.jobs_seen), "the job")
        job = [j for j in holder.worker.jobs_seen if isinstance(j, Steer)][-1]
        assert job.source.directory == str(sae) and job.source.feature == 2 and job.source.any_layer
        assert job.index == STEER_TOKEN and app.steering.last_source == job.source
