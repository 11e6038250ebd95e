"""Issue 10 in the TUI: no control character reaches the terminal (item 5), and a
newcomer's first keys are a message, not commands (item 9). Over the replay of a real
recorded session: these are layout/key behaviours, no model is needed."""

from __future__ import annotations

from nla_tui.core import events as ev
from nla_tui.core.types import Explanation, Message, Sampling
from nla_tui.ui.screens.dialogs import ValueDialog

from tests._support_ui import Holder, async_test, replay_app, settle_replay, wait_until

INJECT = "\x1b]0;pwned\x07\x1b[2J\x1b]52;c;ZXZpbA==\x07"


@async_test
async def test_5_no_control_character_reaches_the_screen():
    app = replay_app(preload=True)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle_replay(pilot, app)
        # an agent transcript with ANSI codes, a token and an explanation holding them
        app.chat.set_messages([Message("user", "colour me" + INJECT), Message("assistant", "ok" + INJECT)])
        i = app.state.tokens[5].index
        app.state.tokens[5].text = "tok" + INJECT
        app.state.explanations[i] = [Explanation(i, "expl" + INJECT, "raw", Sampling(),
                                                 warnings=["warn" + INJECT])]
        app.strip.refresh_tokens()
        app.strip.cursor = i
        app.pane.show(i)
        app.notify("failed: " + INJECT, title="job" + INJECT)
        await pilot.pause()
        screen = app.export_screenshot()
        assert "\x1b" not in screen and "\x07" not in screen
        assert "colour me␛]0;pwned␇␛[2J" in screen.replace("&#160;", " ")
        assert str(app.pane.text).count("␛") >= 4  # token, explanation, warning shown, not obeyed


@async_test
async def test_9_first_keys_typed_into_an_empty_app_are_a_message():
    holder = Holder()
    app = replay_app(holder=holder)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.state.info is not None, "models ready")
        await pilot.press(*"Name three colours.")
        assert app.chat.input.value == "Name three colours."
        assert not isinstance(app.screen, ValueDialog)
        assert [type(j) for j in holder.worker.jobs_seen] == [ev.LoadModels]
        # Esc leaves the box on purpose: on the empty strip an unbound printable key
        # starts the message instead of doing nothing (bound keys keep their meaning).
        app.chat.input.value = ""
        await pilot.press("escape")
        assert app.focused is app.strip
        await pilot.press("Q", "z")  # Q: unbound (N is the notes panel now)
        assert app.chat.input.value == "Qz" and app.focused is app.chat.input
        assert [type(j) for j in holder.worker.jobs_seen] == [ev.LoadModels]


@async_test
async def test_9_a_loaded_conversation_gives_the_keys_to_the_strip():
    app = replay_app(preload=True)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle_replay(pilot, app)
        assert app.focused is app.strip
        await pilot.press("home", "right")
        assert app.strip.cursor == 1
