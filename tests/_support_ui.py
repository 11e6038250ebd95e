"""Helpers for the UI tests (tests/ui, and the Pilot tests in tests/integration that drive the real engine)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Callable

import pytest

from nla_tui.core.store.session import load_session, save_session
from nla_tui.ui.app import NlaApp, create_app
from nla_tui.core.runtime.replay import ReplayWorker
from tests._support_paths import DATA

RECORDED = DATA / "recorded_session"
# A real tool-using agent transcript (tests/data/agent_transcript.json) captured and
# explained once by the demo engine: system prompt, tool call, tool result.
AGENT = DATA / "agent_session"
# The same transcript with its tool result edited (branch 1, "sunny forecast"), recorded
# from the demo engine (tests/_support_session.record_branch_session).
BRANCHES = DATA / "branch_session"
# The prompt the recorded session was made with (tests type it into the chat box).
RECORDED_PROMPT = "The Eiffel Tower is in"


class Holder:
    """Keeps the worker the app built so a test can inspect the jobs it got."""

    worker: ReplayWorker | None = None


def recorded_comparisons(session: object = RECORDED) -> list:
    """The comparisons recorded from the real engine beside a recorded session."""
    import json

    from nla_tui.core.steer_results import Comparison

    if not isinstance(session, Path):  # a Session object a test built: nothing recorded beside it
        return []
    path = session / "comparisons.json"
    return [Comparison.from_json(c) for c in json.loads(path.read_text())] if path.exists() else []


class ScriptedReplay(ReplayWorker):
    """The product's ReplayWorker (same scheduler, same handlers) with the tests' controls:
    `delay` seconds between streamed pieces; `hold_after` pieces, then the job waits until
    `release` is set or it is cancelled (a job reliably "still running" without timing);
    `jobs_seen`, what the UI asked for."""

    def __init__(self, session, emit, *, delay: float = 0.0, hold_after: int | None = None, **kw):
        self.delay, self.hold_after = delay, hold_after
        self.paced = bool(delay)
        self.release = threading.Event()
        self.jobs_seen: list = []
        super().__init__(session, emit, **kw)

    def submit(self, job) -> None:
        self.jobs_seen.append(job)
        super().submit(job)

    def _sleep(self, piece: int = 0) -> bool:
        if self.hold_after is not None and piece > self.hold_after:
            while not (self.release.is_set() or self.cancel.is_set()):
                self.cancel.wait(0.01)
        if self.delay:
            self.cancel.wait(self.delay)
        return self.cancel.is_set()


def replay_app(preload: bool = False, delay: float = 0.0, holder: Holder | None = None,
               options=None, hold_after: int | None = None, session=RECORDED) -> NlaApp:
    def factory(emit):
        w = ScriptedReplay(session, emit, preload=preload, delay=delay, hold_after=hold_after,
                           comparisons=recorded_comparisons(session))
        if holder is not None:
            holder.worker = w
        return w

    return create_app(factory, options)


async def type_message(pilot, text: str) -> None:
    """Type `text` into the message box and send it: `i` first unless the box already
    has focus (it does while the conversation is empty)."""
    if pilot.app.focused is not pilot.app.chat.input:
        await pilot.press("i")
    await pilot.press(*text, "enter")


async def wait_until(pilot, predicate: Callable[[], bool], what: str, limit: float = 60.0) -> None:
    """Let the app run until `predicate` holds. The limit is a hang guard, not a
    speed assertion: it is far above any normal run."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"gave up waiting for: {what}")
        await pilot.pause(0.02)
    await pilot.pause()


async def settle_replay(pilot, app: NlaApp) -> None:
    """Wait for a preloaded replay to show the whole recorded session."""
    await wait_until(pilot, lambda: app.state.info is not None and app.state.tokens
                     and app.state.explained_count() > 0 and app.state.queue_depth == 0,
                     "the replayed session")
    await pilot.pause()


def async_test(fn):
    """Run an async test body with asyncio.run (no pytest-asyncio in the venv)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))

    return wrapper


# ---------------------------------------------------------------- screen scenarios
# Shared by tests/ui/test_ui_snapshots.py and scripts/screenshots.py, so the SVGs in
# screenshots/ are exactly the screens the snapshot tests pin.

CURSOR_TOKEN = 14  # ' Eiffel' in the reply: past the noisy prefix
# The steered continuation and compare recorded from the real engine (data/recorded_session/record_steer.py).
STEER_TOKEN = 18  # ' in' of the reply: the next token names the place
STEER_EDIT = "The Colosseum in Rome, Italy."
COMPARE_PAIR = (18, 8)  # ' in' in the reply and ' in' in the prompt


async def _after_chat(pilot) -> None:
    app = pilot.app
    await wait_until(pilot, lambda: app.state.info is not None, "models ready")
    await type_message(pilot, RECORDED_PROMPT)
    # queue_depth 0 comes after the reply's last event: nothing is left in flight
    await wait_until(pilot, lambda: app.state.reply is None and len(app.state.messages) == 2
                     and app.state.queue_depth == 0, "the replayed reply")
    await pilot.pause()


async def _explained(pilot) -> None:
    app = pilot.app
    await settle_replay(pilot, app)
    await pilot.press("home", *["right"] * CURSOR_TOKEN)
    await pilot.pause()


def recorded_readouts(session: Path = RECORDED):
    """The logit lens and per-sentence fidelity at CURSOR_TOKEN, recorded from the real
    demo engine (data/recorded_session/record_readouts.py)."""
    import json

    from nla_tui.core.types import Candidate, SentenceScore

    doc = json.loads((Path(session) / "readouts.json").read_text())
    return (doc["index"], [[Candidate(**c) for c in layer] for layer in doc["lens"]],
            [SentenceScore(**x) for x in doc["sentences"]])


async def _readouts(pilot) -> None:
    """The explained token with the readouts beside the AV (issue 23), as the worker sends
    them with the cursor's `e`: the lens first, then the explanation with its sentences."""
    from dataclasses import replace

    from nla_tui.core import events as ev
    from nla_tui.ui.messages import EngineEvent

    await _explained(pilot)
    app = pilot.app
    index, lens, sentences = recorded_readouts()
    app.post_message(EngineEvent(ev.LogitLens(index, lens)))
    app.post_message(EngineEvent(ev.ExplainDone(index, [replace(app.state.best(index), sentences=sentences)],
                                                cached=True)))
    await pilot.pause()


async def _help(pilot) -> None:
    await _explained(pilot)
    await pilot.press("question_mark")
    await pilot.pause()


async def _explain_all(pilot) -> None:
    app = pilot.app
    await _after_chat(pilot)
    app.worker.hold_after = 10  # explain-all then stays at 10/N: a stable frame
    await pilot.press("home", *["right"] * CURSOR_TOKEN, "a")
    await wait_until(pilot, lambda: app.state.explained_count() == 10
                     and app.state.all_progress is not None
                     and app.state.all_progress.done == 10, "ten results")


async def _steer_edit(pilot) -> None:
    from textual.widgets import TextArea

    from nla_tui.ui.screens.steer import SteerDialog

    app = pilot.app
    await settle_replay(pilot, app)
    app.strip.set_cursor(STEER_TOKEN)
    await pilot.press("w")
    await wait_until(pilot, lambda: isinstance(app.screen, SteerDialog), "the steer editor")
    area = app.screen.query_one(TextArea)
    area.cursor_blink = False  # a blinking cursor makes the snapshot depend on timing
    area.load_text(STEER_EDIT)
    await pilot.pause()


async def _steer_result(pilot) -> None:
    from nla_tui.ui.screens.steer import SteeredScreen

    await _steer_edit(pilot)
    await pilot.press("ctrl+s")
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, SteeredScreen), "the steered continuation")


async def _steer_vector(pilot) -> None:
    """The steer dialog on a − b: the token marked with c minus the cursor's, its norm shown."""
    from textual.widgets import RadioButton

    from nla_tui.ui.screens.steer import SteerDialog

    app = pilot.app
    await settle_replay(pilot, app)
    app.strip.set_cursor(COMPARE_PAIR[1])
    await pilot.press("c")
    app.strip.set_cursor(STEER_TOKEN)
    await pilot.press("w")
    await wait_until(pilot, lambda: isinstance(app.screen, SteerDialog), "the steer dialog")
    app.screen.query_one("#source-difference", RadioButton).value = True
    await pilot.pause()


async def _compare(pilot) -> None:
    from nla_tui.ui.screens.steer import CompareScreen

    app = pilot.app
    await settle_replay(pilot, app)
    app.strip.set_cursor(COMPARE_PAIR[0])
    await pilot.press("c")
    app.strip.set_cursor(COMPARE_PAIR[1])
    await pilot.press("c")
    await wait_until(pilot, lambda: isinstance(app.screen, CompareScreen), "the comparison")


async def _agent_search(pilot) -> None:
    app = pilot.app
    await settle_replay(pilot, app)
    await pilot.press("slash", *"umbrella|rain", "enter")
    await wait_until(pilot, lambda: app.finder.matches and not app.screen.is_modal, "the search")
    await pilot.press("right_square_bracket")
    await pilot.pause()


BRANCH_TOKEN = 86  # the answer after the edited tool result: explained on branch 1 and on branch 0


async def _branch(pilot) -> None:
    """The recorded branch session on branch 1 (its tool result edited): B, the branch,
    Enter; the edited tokens marked; the cursor on the answer with P (the parent beside it)."""
    from textual.widgets import OptionList

    from nla_tui.ui.screens.branches import BranchesScreen

    app = pilot.app
    await settle_replay(pilot, app)
    app.strip.focus()
    await wait_until(pilot, lambda: app.state.branches is not None, "the branch tree")
    await pilot.press("B")
    await wait_until(pilot, lambda: isinstance(app.screen, BranchesScreen), "the branch list")
    app.screen.query_one(OptionList).highlighted = 1
    await pilot.press("enter")
    await wait_until(pilot, lambda: app.state.current_branch == 1 and app.state.queue_depth == 0
                     and not app.screen.is_modal, "branch 1 shown")
    app.strip.set_cursor(BRANCH_TOKEN)
    await pilot.press("P")
    await pilot.pause()


# name -> (app kwargs, size, run_before)
PAIR_SESSION = DATA / "pair_session"  # run --extra-pair over a hub-layout copy of the demo pair
PAIR_TOKEN = 18  # ' a' of the answer: both pairs explained it


async def _pair(pilot) -> None:
    """One token read by two pairs: the main pair's explanation, then the extra pair's under
    its label and layer, each with its own score."""
    app = pilot.app
    await settle_replay(pilot, app)
    await wait_until(pilot, lambda: PAIR_TOKEN in app.state.pair_explanations, "the extra pair's explanations")
    app.strip.set_cursor(PAIR_TOKEN)
    await pilot.pause()


SCENARIOS = {
    "main_80x24": (dict(), (80, 24), _after_chat),
    "main_120x36": (dict(), (120, 36), _after_chat),
    "explained_80x24": (dict(preload=True), (80, 24), _explained),
    "explained_120x36": (dict(preload=True), (120, 36), _explained),
    "help_120x36": (dict(preload=True), (120, 36), _help),
    "readouts_120x60": (dict(preload=True), (120, 60), _readouts),
    "explain_all_120x36": (dict(), (120, 36), _explain_all),
    "steer_edit_120x36": (dict(preload=True), (120, 36), _steer_edit),
    "steer_result_120x36": (dict(preload=True), (120, 36), _steer_result),
    "steer_vector_120x36": (dict(preload=True), (120, 36), _steer_vector),
    "compare_120x36": (dict(preload=True), (120, 36), _compare),
    "agent_search_120x36": (dict(preload=True, session=AGENT), (120, 36), _agent_search),
    "branch_120x36": (dict(preload=True, session=BRANCHES), (120, 36), _branch),
    "pair_140x48": (dict(preload=True, session=PAIR_SESSION), (140, 48), _pair),
}


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """NLA_TUI_DATA in tmp_path: nothing touches the user's data directory."""
    monkeypatch.setenv("NLA_TUI_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


def shown_explanations(app):
    return [e.to_json() for i in sorted(app.state.explanations) for e in app.state.explanations[i]]


def make_sessions(root: Path) -> dict[str, Path]:
    recorded = load_session(RECORDED)
    paths = {}
    for name, n_exp in (("alpha", 3), ("beta", 0)):
        recorded.name = name
        full = list(recorded.explanations)
        recorded.explanations = [e for e in full if e.index >= 20][:n_exp]  # past the prompt
        paths[name] = save_session(recorded, root / name)
        recorded.explanations = full
    broken = root / "broken"
    broken.mkdir()
    (broken / "session.json").write_text('{"schema_version": 1, "name": "bro')  # truncated
    paths["broken"] = broken
    return paths
