"""UI keypress-to-render with a 5,000-token session, headless (Textual Pilot).

The recorded real session in tests/data is tiled to 5,000 tokens (explanations
on every token it explained) and replayed with no model. Per key we take
`pilot.press(key)` + `pilot.pause()` (until the app has handled the key and the
headless driver has refreshed the screen) and record two clocks:
- process CPU time: the work a keypress costs (handler + layout + render). On an
  otherwise idle event loop this is the keypress-to-render latency; it is the
  figure held against the 20 ms target.
- wall time: an upper bound inflated by Pilot itself, which sleeps in 20 ms
  slices until the process looks idle (textual._wait.wait_for_idle).
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import time
from pathlib import Path

import numpy as np

from .common import Report, percentile

RECORDED = Path(__file__).resolve().parent.parent / "tests" / "data" / "recorded_session"
N_TOKENS = 5000
AGENT_TOKENS, AGENT_MESSAGES = 20_000, 500


def load_recorded():
    from nla_tui.core.store.session import load_session

    return load_session(RECORDED)


def big_session(n: int = N_TOKENS, copies_of_messages: int = 10):
    """The recorded session tiled to n tokens. Its messages are repeated
    `copies_of_messages` times (10: ~20 turns of ~250 tokens, a long real chat) and
    the tiled tokens are spread over those turns in order."""
    from nla_tui.core.store.session import load_session

    s = load_session(RECORDED)
    reps = -(-n // len(s.tokens))
    copies = max(1, min(copies_of_messages, reps))
    tokens, expls = [], []
    for r in range(reps):
        off, turn_off = r * len(s.tokens), len(s.messages) * (r * copies // reps)
        tokens += [dataclasses.replace(t, index=t.index + off, turn=t.turn + turn_off if t.turn >= 0 else t.turn)
                   for t in s.tokens]
        expls += [dataclasses.replace(e, index=e.index + off) for e in s.explanations]
    tokens = tokens[:n]
    expls = [e for e in expls if e.index < n]
    acts = np.tile(s.activations, (reps, 1))[:n]
    return dataclasses.replace(s, name="bench-5000", tokens=tokens, explanations=expls, activations=acts,
                               messages=s.messages * copies)


def agent_session(n_tokens: int = AGENT_TOKENS, n_messages: int = AGENT_MESSAGES):
    """The issue-12 case: 20,000 tokens in 500 messages (a long agent transcript)."""
    s = load_recorded()
    copies = n_messages // len(s.messages)
    return dataclasses.replace(big_session(n_tokens, copies_of_messages=copies), name="bench-agent-500")


async def _measure(session, keys: list[str], size=(120, 36)) -> dict[str, list[float]]:
    from nla_tui.ui.app import create_app
    from nla_tui.core.runtime.replay import ReplayWorker

    app = create_app(lambda emit: ReplayWorker(session, emit, preload=True))
    times: dict[str, list[float]] = {}
    walls: list[float] = []
    async with app.run_test(size=size) as pilot:
        end = time.perf_counter() + 120
        while not (app.state.tokens and len(app.state.tokens) >= len(session.tokens)):
            if time.perf_counter() > end:
                raise RuntimeError(f"the {len(session.tokens):,}-token session never finished loading into the app")
            await pilot.pause(0.05)
        await pilot.pause()
        await pilot.press("home")
        for k in keys:
            t, c = time.perf_counter(), time.process_time()
            await pilot.press(k)
            await pilot.pause()
            times.setdefault(k, []).append(1000 * (time.process_time() - c))
            walls.append(1000 * (time.perf_counter() - t))
    times["_wall"] = walls
    return times


BRANCHES = RECORDED.parent / "branch_session"  # the agent transcript with its tool result edited (branch 1)


async def _measure_branch(on_branch: bool, keys: list[str]) -> list[float]:
    """CPU time per key on the recorded branch session: on branch 0 (the baseline), or on
    branch 1 with the diff marks and P's parent comparison in the pane (issue 26)."""
    from nla_tui.core.branch_jobs import SwitchBranch
    from nla_tui.core.runtime.replay import ReplayWorker
    from nla_tui.core.store.session import load_session
    from nla_tui.ui.app import create_app

    session = load_session(BRANCHES)
    app = create_app(lambda emit: ReplayWorker(session, emit, preload=True))
    out: list[float] = []
    async with app.run_test(size=(120, 36)) as pilot:
        end = time.perf_counter() + 120
        while app.state.branches is None or app.state.queue_depth:
            if time.perf_counter() > end:
                raise RuntimeError("the branch session never finished loading into the app")
            await pilot.pause(0.05)
        app.strip.focus()
        if on_branch:
            app.submit(SwitchBranch(1))
            while app.state.current_branch != 1 or app.state.queue_depth:
                await pilot.pause(0.05)
            await pilot.press("P")
            assert app.state.compare_parent
        await pilot.press("home")
        for k in keys:
            c = time.process_time()
            await pilot.press(k)
            await pilot.pause()
            out.append(1000 * (time.process_time() - c))
    return out


KEYS = ["right"] * 150 + ["left"] * 50 + ["w"] * 50 + ["pagedown"] * 20 + ["end", "home"] * 10


def run(rep: Report, out: Path, only: set[str] | None = None) -> None:
    def stress():
        # Same 5,000 tokens in ~300 short messages: cost that grows with the number of turns.
        times = asyncio.run(_measure(big_session(copies_of_messages=1000), KEYS[:100]))
        times.pop("_wall")
        allt = [x for v in times.values() for x in v]
        n_msgs = len(big_session(copies_of_messages=1000).messages)
        rep.add("ui_keypress_p95_ms_many_turns", percentile(allt, 95), "ms",
                note=f"CPU time per key, {N_TOKENS} tokens in {n_msgs} messages")

    def measure():
        s = big_session()
        rep.details["ui_messages"] = len(s.messages)
        times = asyncio.run(_measure(s, KEYS + ["f24"] * 50))
        walls = times.pop("_wall")
        null = times.pop("f24", [])  # unbound key: Pilot + dispatch cost with no app work
        allt = [x for v in times.values() for x in v]
        if null:
            rep.add("ui_null_key_p95_ms", percentile(null, 95), "ms",
                    note="unbound key (f24): what Pilot and Textual's dispatch cost by themselves")
        rep.details["ui_ms_by_key"] = {k: {"n": len(v), "median": round(statistics.median(v), 2),
                                           "p95": round(percentile(v, 95), 2)} for k, v in times.items()}
        rep.add("ui_keypress_p95_ms", percentile(allt, 95), "ms",
                note=f"CPU time per key (handler+render), {N_TOKENS} tokens, {len(allt)} keys, 120x36")
        rep.add("ui_keypress_median_ms", statistics.median(allt), "ms", note="CPU time per key")
        rep.add("ui_keypress_wall_p95_ms", percentile(walls, 95), "ms",
                note="wall incl. Pilot's >=20 ms idle-detection sleeps (upper bound)")
    def agent():
        # Issue 12: 20,000 tokens in 500 messages; the key cost must not grow with messages.
        s = agent_session()
        times = asyncio.run(_measure(s, KEYS[:150] + ["f24"] * 30))
        times.pop("_wall")
        null = times.pop("f24", [])
        allt = [x for v in times.values() for x in v]
        rep.details["ui_agent_ms_by_key"] = {k: {"n": len(v), "median": round(statistics.median(v), 2),
                                                 "p95": round(percentile(v, 95), 2)} for k, v in times.items()}
        rep.add("ui_keypress_p95_ms_500_messages", percentile(allt, 95), "ms",
                note=f"CPU time per key, {len(s.tokens):,} tokens in {len(s.messages)} messages, 120x36")
        rep.add("ui_keypress_median_ms_500_messages", statistics.median(allt), "ms", note="CPU time per key")
        if null:
            rep.add("ui_null_key_p95_ms_500_messages", percentile(null, 95), "ms", note="unbound key (f24)")
    def branch():
        # Issue 26: a cursor move on a branch (diff marks, the pane's parent comparison) against
        # the same moves on the root of the same session, measured in the same run.
        keys = ["right"] * 100 + ["left"] * 40
        root = asyncio.run(_measure_branch(False, keys))
        shown = asyncio.run(_measure_branch(True, keys))
        rep.add("ui_branch_key_p95_ms_root", percentile(root, 95), "ms",
                note=f"CPU time per arrow key, recorded branch session ({len(keys)} keys), branch 0: the baseline")
        rep.add("ui_branch_key_p95_ms_branch_P", percentile(shown, 95), "ms", baseline=percentile(root, 95),
                note="the same keys on branch 1 with the edited tokens marked and P on")
        rep.add("ui_branch_key_median_ms_root", statistics.median(root), "ms", note="CPU time per key")
        rep.add("ui_branch_key_median_ms_branch_P", statistics.median(shown), "ms", baseline=statistics.median(root),
                note="CPU time per key")

    for name, fn in (("ui", measure), ("ui_many_turns", stress), ("ui_agent_500", agent), ("ui_branch", branch)):
        if only is None or name in only:
            rep.section(name, fn, out)
