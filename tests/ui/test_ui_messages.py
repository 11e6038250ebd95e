"""Worker events reach the app as typed messages (ui/messages.py): a burst of streamed
explanation text or progress is coalesced by Textual (can_replace), never reordered
across tokens or jobs, and everything else arrives one by one."""

from nla_tui.core import events as ev
from nla_tui.core.steer_jobs import SteerProgress
from nla_tui.ui.messages import EngineEvent, ExplainTextArrived, ProgressArrived

from tests._support_ui import async_test, replay_app, settle_replay


@async_test
async def test_a_burst_of_streamed_text_is_folded_once_per_token_in_order():
    app = replay_app(preload=True)
    handled: list[tuple[str, object]] = []

    def hook(message):  # what the app dispatches, after Textual's coalescing
        if isinstance(message, EngineEvent):
            handled.append((type(message).__name__, message.event))

    async with app.run_test(size=(120, 36), message_hook=hook) as pilot:
        await settle_replay(pilot, app)
        handled.clear()
        # As the worker thread does it: one post per decode step, faster than the UI draws.
        for k in range(1, 41):
            app.emit(ev.ExplainDelta(7, "word " * k))
        app.emit(ev.ExplainDelta(9, "other token"))
        for done in range(1, 21):
            app.emit(ev.ExplainAllProgress(done, 20, None))
        app.emit(ev.QueueDepth(0))
        await pilot.pause()

        kinds = [(name, getattr(e, "index", None)) for name, e in handled]
        # The 40 texts of token 7 became their last one; token 9's was not swallowed by them.
        assert kinds[:2] == [("ExplainTextArrived", 7), ("ExplainTextArrived", 9)]
        assert handled[0][1].text == "word " * 40
        assert app.state.partial[7] == "word " * 40 and app.state.partial[9] == "other token"
        progress = [e for name, e in handled if isinstance(e, ev.ExplainAllProgress)]
        assert [p.done for p in progress] == [20]  # only the newest count was drawn
        assert isinstance(handled[-1][1], ev.QueueDepth)


def test_only_the_same_stream_replaces():
    older, newer = ExplainTextArrived(ev.ExplainDelta(3, "a")), ExplainTextArrived(ev.ExplainDelta(3, "ab"))
    assert older.can_replace(newer)
    assert not older.can_replace(ExplainTextArrived(ev.ExplainDelta(4, "ab")))
    assert not older.can_replace(EngineEvent(ev.ExplainDone(3, [])))  # a finished explanation is never dropped
    load = ProgressArrived(ev.LoadProgress("av", 0.1))
    assert load.can_replace(ProgressArrived(ev.LoadProgress("av", 0.2)))
    assert not load.can_replace(ProgressArrived(ev.LoadProgress("ar", 0.2)))  # one bar per model
    steer = ProgressArrived(SteerProgress("compare", 1, 10))
    assert steer.can_replace(ProgressArrived(SteerProgress("compare", 2, 10)))
    assert not steer.can_replace(ProgressArrived(ev.ExplainAllProgress(2, 10, None)))
    assert not EngineEvent(ev.ChatDelta("x")).can_replace(EngineEvent(ev.ChatDelta("y")))  # increments: all kept
