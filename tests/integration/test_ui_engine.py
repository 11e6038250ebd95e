"""The TUI on the REAL demo engine (Gemma 3 270M on CPU): chat, explain, explain-all.

No timing assertions: waits have generous hang guards only.
"""

from __future__ import annotations

import json
import threading
import uuid

import pytest

from nla_tui.core.types import NOISY_PREFIX
from nla_tui.core.runtime.worker import EngineWorker
from nla_tui.ui.app import create_app
from nla_tui.ui.options import UiOptions
from nla_tui.ui.messages import EngineEvent

from tests._support_ui import async_test, type_message, wait_until

pytestmark = pytest.mark.slow
HANG_GUARD = 900.0  # seconds; a hang guard on a loaded 2-core CI box, not a speed check


def _app(engine, **options):
    holder = {}

    def factory(emit):
        holder["worker"] = EngineWorker(engine, emit)
        return holder["worker"]

    return create_app(factory, UiOptions(**options)), holder


@async_test
async def test_chat_streams_then_explain_shows_a_score(demo_engine):
    app, holder = _app(demo_engine, max_new_tokens=24)
    seen, pending_rows = [], []

    def hook(message):  # every message the app handles, as Textual delivers it
        if isinstance(message, EngineEvent):
            seen.append(type(message.event).__name__)

    async with app.run_test(size=(120, 36), message_hook=hook) as pilot:
        await wait_until(pilot, lambda: app.state.info is not None and app.state.queue_depth == 0,
                         "models ready", HANG_GUARD)
        before = len(app.state.messages)  # the shared engine may hold a conversation already
        refresh_pending = app.strip.refresh_pending

        def spy_refresh():
            refresh_pending()
            pending_rows.append(len(app.strip._pending))

        app.strip.refresh_pending = spy_refresh
        await type_message(pilot, "The Eiffel Tower is in")
        await wait_until(pilot, lambda: app.state.reply is None
                         and len(app.state.messages) == before + 2,
                         "the reply to finish", HANG_GUARD)
        reply = demo_engine.messages[-1].content
        # it streamed: deltas reached the chat and the strip's provisional tail
        assert "ChatStarted" in seen and "ChatDelta" in seen
        assert max(pending_rows) > 0
        assert reply.strip() and app.chat.reply_text == reply
        assert len(app.state.tokens) == len(demo_engine.tokens) > NOISY_PREFIX + 2
        # every token of the conversation is in the strip and the cursor followed the reply
        assert app.strip.shown_indices == list(range(len(demo_engine.tokens)))
        assert app.strip.cursor == len(demo_engine.tokens) - 1
        assert app.focused is app.strip

        await pilot.press("home", *["right"] * (NOISY_PREFIX + 1))
        index = app.strip.cursor
        assert index == NOISY_PREFIX + 1
        await pilot.press("e")
        await wait_until(pilot, lambda: app.state.best(index) is not None, "the explanation", HANG_GUARD)
        best = app.state.best(index)
        assert best.score is not None
        body = str(app.pane.render())
        assert app.state.verdict(best) in body and f"cos {best.score.cos:.3f}" in body
        # The demo pair says what it is: trained here, a small model
        info = app.state.info
        assert info.pair_label in body and info.pair_note in body and "untrained" not in body


@async_test
async def test_keys_stay_live_during_explain_all(demo_engine, tmp_path):
    # A transcript (teacher-forced, no generation) long enough for 50 moves. The
    # nonce up front keeps the on-disk explanation cache from answering instantly.
    words = " ".join(f"word{i}" for i in range(40))
    transcript = tmp_path / "chat.json"
    transcript.write_text(json.dumps([
        {"role": "user", "content": f"{uuid.uuid4().hex} Repeat these: {words}"},
        {"role": "assistant", "content": words},
    ]))
    app, holder = _app(demo_engine, messages=str(transcript))
    async with app.run_test(size=(120, 36)) as pilot:
        first = json.loads(transcript.read_text())[0]["content"]
        await wait_until(pilot, lambda: app.state.messages and app.state.messages[0].content == first,
                         "the transcript", HANG_GUARD)
        assert len(app.strip.shown_indices) > 60
        # The first AV batch of explain-all waits for the test: it is certainly still
        # running while the 50 keys arrive, whatever the machine's speed.
        entered, gate, real = threading.Event(), threading.Event(), demo_engine.explain_vectors

        def gated(*args, **kwargs):
            entered.set()
            assert gate.wait(HANG_GUARD)
            return real(*args, **kwargs)

        demo_engine.explain_vectors = gated
        try:
            await pilot.press("a")
            worker = holder["worker"]
            await wait_until(pilot, lambda: entered.is_set() and app.state.all_progress is not None,
                             "explain-all to start", HANG_GUARD)
            await pilot.press("home")
            start = app.strip.cursor
            await pilot.press(*["right"] * 50)
            # every key was handled while the worker was busy explaining
            assert app.strip.cursor == start + 50
            assert not worker.idle.is_set() and app.state.all_progress is not None
            assert app.query_one("#allbar").display
            await pilot.press("escape")
        finally:
            gate.set()
            del demo_engine.explain_vectors  # back to the class's method
        await wait_until(pilot, lambda: worker.idle.is_set() and not app.query_one("#allbar").display,
                         "the cancel", HANG_GUARD)
        assert any("Explain all cancelled" in n.message for n in app._notifications)
        assert app.state.explained_count() < len(app.state.tokens)


@async_test
async def test_demo_opens_on_its_teacher_forced_example_and_chat_stays_available(demo_engine):
    """`nla-tui --preset demo` with no transcript: the shipped example conversation is
    captured as written (its model turns teacher-forced), a one-line note says why, and
    the chat box still talks to the model."""
    from nla_tui.core.nla.presets import DEMO_EXAMPLE
    from nla_tui.core.store.transcript import load_transcript
    from nla_tui.ui.input_actions import EXAMPLE_NOTE

    example = load_transcript(DEMO_EXAMPLE)
    assert [m.role for m in example] == ["user", "assistant"] * (len(example) // 2)
    app, _ = _app(demo_engine, example=str(DEMO_EXAMPLE), max_new_tokens=4)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.state.messages == example and app.state.queue_depth == 0,
                         "the example conversation", HANG_GUARD)
        await pilot.pause()
        # Teacher-forced: the engine holds exactly the shipped turns (nothing generated),
        # and every one of their tokens is on the strip, model turns included.
        assert demo_engine.messages == example
        assert len(app.state.tokens) == len(demo_engine.tokens) > 40
        reply = "".join(t.text for t in app.state.tokens if t.role == "model")
        assert "sheltered port" in reply and "reverse" in reply
        assert [(e.role, e.text) for e in app.chat.log.entries] == [(m.role, m.content) for m in example]
        # The note is on screen, on one line at this size.
        note = app.query_one("#chat-note")
        assert app.chat.note == EXAMPLE_NOTE and note.region.height == 1
        assert "not a chat model" in EXAMPLE_NOTE and "teacher-forced" in EXAMPLE_NOTE
        # Chat is still available: a typed message continues the conversation.
        await pilot.press("i", *"Thanks!", "enter")
        await wait_until(pilot, lambda: app.state.reply is None and len(app.state.messages) == len(example) + 2,
                         "the reply to finish", HANG_GUARD)
        assert demo_engine.messages[:len(example)] == example
        assert demo_engine.messages[len(example)].content == "Thanks!"


@async_test
async def test_a_given_transcript_wins_over_the_demo_example(demo_engine, tmp_path):
    from nla_tui.core.nla.presets import DEMO_EXAMPLE

    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps([{"role": "user", "content": "Paris is a city."},
                                {"role": "assistant", "content": "Yes, in France."}]))
    app, _ = _app(demo_engine, example=str(DEMO_EXAMPLE), messages=str(mine))
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.state.tokens and app.state.queue_depth == 0
                         and app.state.messages and app.state.messages[0].content == "Paris is a city.",
                         "the given transcript", HANG_GUARD)
        await pilot.pause(0.2)
        assert [m.content for m in demo_engine.messages] == ["Paris is a city.", "Yes, in France."]
        assert app.chat.note == ""
