"""Keys and layout of the app, driven over a replay of a real recorded session.

The session in tests/data/recorded_session was recorded once from the real demo
engine (Gemma 3 270M); the ReplayWorker serves its events, so these tests are
deterministic and load no model.
"""

from nla_tui.core import events as ev
from nla_tui.ui.app import NARROW
from nla_tui.ui.screens.dialogs import PromptDialog, ValueDialog
from nla_tui.ui.screens.help import HelpScreen

from tests._support_ui import (RECORDED_PROMPT, Holder, async_test, replay_app, settle_replay, type_message,
                         wait_until)


async def _chat(pilot, app):
    await type_message(pilot, RECORDED_PROMPT)
    await wait_until(pilot, lambda: app.state.reply is None and len(app.state.messages) == 2
                     and app.state.queue_depth == 0, "the replayed reply")


@async_test
async def test_chat_streams_reply_into_chat_and_strip():
    holder = Holder()
    app = replay_app(holder=holder)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.state.info is not None, "models ready")
        assert app.focused is app.chat.input  # empty conversation: keys typed are a message
        await _chat(pilot, app)
        jobs = holder.worker.jobs_seen
        assert isinstance(jobs[-1], ev.Chat) and jobs[-1].text == RECORDED_PROMPT
        recorded = holder.worker.session
        assert app.chat.reply_text == recorded.messages[1].content
        assert len(app.state.tokens) == len(recorded.tokens)
        # the cursor followed the reply to its last token; the strip has focus again
        assert app.strip.cursor == app.strip.shown_indices[-1]
        assert app.focused is app.strip


@async_test
async def test_navigation_keys():
    app = replay_app(preload=True)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle_replay(pilot, app)
        strip, toks = app.strip, app.state.tokens
        await pilot.press("home")
        assert strip.cursor == 0
        await pilot.press("right", "right", "right")
        assert strip.cursor == 3
        await pilot.press("left")
        assert strip.cursor == 2
        await pilot.press("end")
        assert strip.cursor == len(toks) - 1
        await pilot.press("pageup")  # start of the last turn
        start = strip.cursor
        assert toks[start].turn == toks[-1].turn and toks[start - 1].turn != toks[start].turn
        await pilot.press("pageup")  # start of the turn before
        assert toks[strip.cursor].turn < toks[start].turn
        await pilot.press("pagedown")
        assert strip.cursor == start
        # word moves land on tokens that start a word, and f then b comes back
        await pilot.press("home", "f", "f", "f")
        w3 = strip.cursor
        assert w3 > 2 and strip._word_start(strip.shown_indices.index(w3))
        await pilot.press("b")
        assert strip.cursor < w3
        await pilot.press("ctrl+right")
        assert strip.cursor == w3


@async_test
async def test_special_toggle_hides_specials_and_keeps_cursor_on_a_shown_token():
    app = replay_app(preload=True)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle_replay(pilot, app)
        await pilot.press("home")
        await pilot.press("s")
        shown = app.strip.shown_indices
        assert all(app.state.tokens[i].role not in ("bos", "special") for i in shown)
        assert app.strip.cursor in shown
        assert "specials off" in str(app.query_one("#legend").render())
        await pilot.press("s")
        assert len(app.strip.shown_indices) == len(app.state.tokens)


@async_test
async def test_explain_resample_samples_and_copy_submit_the_right_jobs():
    holder = Holder()
    app = replay_app(holder=holder)
    async with app.run_test(size=(120, 36)) as pilot:
        await _chat(pilot, app)
        await pilot.press("home", *["right"] * 12, "e")
        index = app.strip.cursor
        await wait_until(pilot, lambda: app.state.best(index) is not None, "the explanation")
        body = str(app.pane.render())
        best = app.state.best(index)
        assert best.text.strip()[:20] in body and app.state.verdict(best) in body
        await pilot.press("r", "R")
        explains = [j for j in holder.worker.jobs_seen if isinstance(j, ev.Explain)]
        assert [j.index for j in explains] == [index] * 3
        assert not explains[0].force and explains[1].force and explains[1].sampling.temperature > 0
        assert explains[2].samples == 4 and explains[2].sampling.seed != explains[1].sampling.seed
        await pilot.press("y")
        assert best.text in app.clipboard


@async_test
async def test_explain_all_fills_the_strip_and_esc_cancels():
    holder = Holder()
    app = replay_app(holder=holder)
    async with app.run_test(size=(120, 36)) as pilot:
        await _chat(pilot, app)
        holder.worker.hold_after = 3  # explain-all then runs until cancelled
        strip = app.strip
        before = strip._style(0)
        await pilot.press("a")
        job = holder.worker.jobs_seen[-1]
        assert isinstance(job, ev.ExplainAll) and len(job.indices) == len(app.state.tokens)
        bar = app.query_one("#allbar")
        first = job.indices[0]
        assert first == 0
        await wait_until(pilot, lambda: app.state.explained_count() == 3, "three results")
        assert bar.display and "3/" in str(app.query_one("#all-eta").render())
        assert strip._style(first) != before  # recoloured by fidelity
        await pilot.press("escape")
        await wait_until(pilot, lambda: not bar.display, "the cancelled bar to hide")
        assert app.state.explained_count() == 3


@async_test
async def test_failures_and_bad_input_are_shown_and_the_app_keeps_running(tmp_path):
    app = replay_app(preload=True)  # a saved session refuses to chat
    async with app.run_test(size=(120, 36)) as pilot:
        await settle_replay(pilot, app)
        await type_message(pilot, "hi")
        await wait_until(pilot, lambda: any("without models" in n.message
                                            for n in app._notifications), "the failure notice")
        bad = tmp_path / "bad.json"
        bad.write_text("{not json")
        app.inputs.open_transcript(bad)
        await pilot.pause()
        assert any("not valid JSON" in n.message for n in app._notifications)
        await pilot.press("right")  # still alive and answering keys
        assert app.is_running


@async_test
async def test_dialogs_validate_temperature_and_prompt():
    holder = Holder()
    app = replay_app(preload=True, holder=holder)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle_replay(pilot, app)
        await pilot.press("t")
        assert isinstance(app.screen, ValueDialog)
        await pilot.press(*["backspace"] * 5, *"hot", "enter")
        assert isinstance(app.screen, ValueDialog)  # refused, with a reason
        assert "not a number" in str(app.screen.query_one("#dialog-error").render())
        await pilot.press(*["backspace"] * 3, *"0.5", "enter")
        assert not isinstance(app.screen, ValueDialog) and app.temperature == 0.5
        await pilot.press("p")
        assert isinstance(app.screen, PromptDialog)
        area = app.screen.query_one("#prompt-area")
        area.text = "no slot"
        await pilot.press("ctrl+s")
        assert isinstance(app.screen, PromptDialog)
        area.text = "Describe <INJECT> briefly."
        await pilot.press("ctrl+s")
        assert app.av_prompt == "Describe <INJECT> briefly."
        await pilot.press("e")
        job = holder.worker.jobs_seen[-1]
        assert job.prompt == "Describe <INJECT> briefly." and job.sampling.temperature == 0.5


@async_test
async def test_cursor_follows_a_streaming_reply_unless_moved():
    holder = Holder()
    app = replay_app(holder=holder)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: holder.worker is not None, "the worker")
        holder.worker.hold_after = 3  # the reply stops after 3 tokens until released
        strip = app.strip
        await type_message(pilot, RECORDED_PROMPT)
        await wait_until(pilot, lambda: app.state.reply and len(strip._pending) > 0,
                         "the reply to start streaming")
        assert strip.follow and strip.cursor == strip.shown_indices[-1]
        await pilot.press("home")
        assert not strip.follow and strip.cursor == 0
        holder.worker.release.set()
        await wait_until(pilot, lambda: app.state.reply is None and len(app.state.messages) == 2,
                         "the reply to finish")
        assert strip.cursor == 0  # the moved cursor stayed put
        assert not strip._pending and len(strip.shown_indices) == len(app.state.tokens)


@async_test
async def test_end_reattaches_the_cursor_to_a_streaming_reply():
    holder = Holder()
    app = replay_app(holder=holder)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: holder.worker is not None, "the worker")
        holder.worker.hold_after = 3
        strip = app.strip
        await type_message(pilot, RECORDED_PROMPT)
        await wait_until(pilot, lambda: app.state.reply and len(strip._pending) > 0, "streaming")
        await pilot.press("home", "end")
        assert strip.follow
        holder.worker.release.set()
        await wait_until(pilot, lambda: app.state.reply is None and len(app.state.messages) == 2,
                         "the reply to finish")
        assert strip.cursor == len(app.state.tokens) - 1


@async_test
async def test_explain_current_turn_only_and_palette_commands():
    holder = Holder()
    app = replay_app(holder=holder)
    async with app.run_test(size=(120, 36)) as pilot:
        await _chat(pilot, app)
        await pilot.press("home", *["right"] * 6, "A")
        job = holder.worker.jobs_seen[-1]
        turn = app.state.tokens[app.strip.cursor].turn
        assert isinstance(job, ev.ExplainAll) and job.indices
        assert {app.state.tokens[i].turn for i in job.indices} == {turn}
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Explain token", "Explain all", "Cancel", "Edit AV prompt", "nla-tui keys"} <= titles


def test_every_key_in_the_keymap_runs_an_action_of_its_widget():
    # One keymap (ui/keys.py) feeds the bindings, the help and the palette; what can still
    # go wrong is an entry whose action its widget does not have (a typo, a renamed method).
    import re

    from nla_tui.ui.app import NlaApp
    from nla_tui.ui.keys import Key, KEYMAP
    from nla_tui.ui.widgets.token_strip import TokenStrip

    owners = {"app": NlaApp, "strip": TokenStrip}
    for entry in KEYMAP:
        if isinstance(entry, Key):
            name = re.match(r"\w+", entry.action).group(0)
            assert callable(getattr(owners[entry.widget], f"action_{name}", None)), \
                f"{entry.key} runs {entry.action}, which {owners[entry.widget].__name__} does not define"


def test_no_key_is_bound_twice_across_the_app_and_the_strip():
    # The strip has focus, so a key it binds shadows the app's binding of the same
    # key: the app's action would be unreachable (issue 13 moved next-word to f).
    from nla_tui.ui.keys import bindings_for

    seen: dict[str, str] = {}
    for b in bindings_for("app") + bindings_for("strip"):
        for key in b.key.split(","):
            assert key not in seen, f"{key} is bound to both {seen[key]} and {b.action}"
            seen[key] = b.action


@async_test
async def test_help_screen_opens_closes_and_side_pane_folds():
    app = replay_app(preload=True)
    async with app.run_test(size=(NARROW - 20, 24)) as pilot:
        await settle_replay(pilot, app)
        assert app.screen.has_class("-narrow")
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await pilot.resize_terminal(NARROW + 20, 36)
        await pilot.pause()
        assert not app.screen.has_class("-narrow")


@async_test
async def test_a_notice_never_covers_the_folded_explanation_pane():
    app = replay_app(preload=True)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await settle_replay(pilot, app)
        assert app.screen.has_class("-narrow")
        app.notify("A notice of two lines' length, long enough to wrap in a narrow terminal.", timeout=30)
        await wait_until(pilot, lambda: app.screen.query("Toast"), "the notice")
        await pilot.pause(0.2)
        toast, side = app.screen.query_one("Toast").region, app.query_one("#side").region
        assert toast.height and side.height and not toast.overlaps(side)


@async_test
async def test_open_transcript_dialog_sends_set_conversation(tmp_path):
    import json

    holder = Holder()
    app = replay_app(holder=holder)
    path = tmp_path / "chat.json"
    recorded = [{"role": "user", "content": RECORDED_PROMPT}, {"role": "assistant", "content": "x"}]
    path.write_text(json.dumps(recorded))
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.state.info is not None, "models ready")
        await pilot.press("escape", "o", *str(path), "enter")  # Esc: out of the message box
        await wait_until(pilot, lambda: len(app.state.messages) == 2, "the transcript")
        job = next(j for j in holder.worker.jobs_seen if isinstance(j, ev.SetConversation))
        assert [m.to_json() for m in job.messages] == recorded
        assert len(app.state.tokens) == len(holder.worker.session.tokens)
        assert len(app.chat.log.entries) == 2 and app.chat.log.row_text(0).startswith("you: ")


@async_test
async def test_click_moves_the_cursor_and_esc_in_the_message_box_only_leaves_it():
    from nla_tui.ui.widgets.strip_layout import GUTTER

    holder = Holder()
    app = replay_app(preload=True, holder=holder)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle_replay(pilot, app)
        strip = app.strip
        row = strip._layout.row_of[5]
        cell = next(c for c in strip._layout.rows[row].cells if c.index == 5)
        top = strip.gutter.top  # the strip's top border
        await pilot.click("#strip", offset=(GUTTER + cell.x, top + row - int(strip.scroll_offset.y)))
        assert strip.cursor == 5
        await pilot.press("i")
        assert app.focused is app.chat.input
        cancels = []
        holder.worker.cancel_current = lambda: cancels.append(1)
        await pilot.press("escape")
        assert app.focused is strip and not cancels
        await pilot.press("escape")
        assert cancels == [1]


@async_test
async def test_conversation_activations_reach_the_ui_state():
    holder = Holder()
    app = replay_app(holder=holder)
    async with app.run_test(size=(80, 24)) as pilot:
        await _chat(pilot, app)
        acts = app.state.activations
        assert acts is not None and acts.shape == (len(app.state.tokens), app.state.info.d_model)
