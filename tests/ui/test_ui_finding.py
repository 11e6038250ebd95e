"""Finding tokens in a transcript: search, jumps, role filter, limited explain-all and the
overview line, on a replay of a real recorded tool-using session (tests/data/agent_session)."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

from tests._support_ui import AGENT, Holder, async_test, replay_app, settle_replay, wait_until
from nla_tui.core import events as ev
from nla_tui.core.store.session import load_session
from nla_tui.core.types import Candidate, TokenInfo
from nla_tui.ui.finding import next_match, search, span_around, step, surprise
from nla_tui.ui.state import UiState

SPECIAL = ("bos", "special")


def _tok(i, text, tid, top=(), role="user", turn=0):
    return TokenInfo(i, tid, text, role, turn, 1.0, [Candidate(c, "", p) for c, p in top])


def test_surprise_reads_the_next_token_from_the_top5_and_bounds_the_rest():
    toks = [_tok(0, "a", 1, [(2, 0.5), (3, 0.3)]), _tok(1, "b", 2, [(9, 0.6), (8, 0.3)]), _tok(2, "c", 7)]
    s = surprise(toks)
    assert math.isclose(s[0], -math.log(0.5))  # the actual next (id 2) had p 0.5
    assert math.isclose(s[1], -math.log(0.1))  # id 7 not in top: p <= 1 - 0.9
    assert s[2] is None  # the last token predicts nothing seen


def test_search_spans_tokens_and_reads_explanations():
    st = UiState()
    st.tokens = [_tok(0, "The", 1), _tok(1, " cap", 2), _tok(2, "ital", 3), _tok(3, " of", 4)]
    assert search(st, re.compile("capital"), [0, 1, 2, 3]) == [(1, 2)]
    assert search(st, re.compile("capital"), [0, 2, 3]) == []  # " cap" filtered out: no match across the gap
    assert next_match([(1, 2), (5, 5)], 1, 1) == 5 and next_match([(1, 2), (5, 5)], 5, 1) == 1
    assert next_match([(1, 2), (5, 5)], 1, -1) == 5
    assert step([4, 2, 9], 2, 1) == 9 and step([4, 2, 9], 7, 1) == 4 and step([4, 2, 9], 7, -1) == 9


def _session():
    return load_session(AGENT)


def _next_token_probs(s):
    """(p of the token actually next, index) for every ordinary token: from the top-5
    captured there, else its upper bound min(p5, 1 - sum of the top 5)."""
    out = []
    for t in s.tokens:
        if t.role in SPECIAL or t.index + 1 >= len(s.tokens):
            continue
        nxt = s.tokens[t.index + 1].token_id
        p = {c.token_id: c.prob for c in t.top}.get(nxt)
        if p is None:
            p = min(t.top[-1].prob, 1 - sum(c.prob for c in t.top))
        out.append((p, t.index))
    return out


@async_test
async def test_search_highlights_matches_and_brackets_walk_them():
    s = _session()
    app = replay_app(preload=True, session=AGENT)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle_replay(pilot, app)
        await pilot.press("home", "slash", *"umbrella", "enter")
        await wait_until(pilot, lambda: not app.screen.is_modal, "the search dialog closing")
        want = [t.index for t in s.tokens if "umbrella" in t.text.lower()]
        expl = [e.index for e in s.explanations if "umbrella" in e.text.lower()]
        assert len(want) >= 2  # the user's question and the model's answer
        firsts = sorted({*want, *expl})
        assert app.strip.hits >= set(want)
        assert app.strip.cursor == firsts[0]
        await pilot.press("right_square_bracket")
        assert app.strip.cursor == firsts[1]
        await pilot.press("left_square_bracket")
        assert app.strip.cursor == firsts[0]
        await pilot.press("left_square_bracket")  # wraps to the last match
        assert app.strip.cursor == firsts[-1]
        assert "umbrella: " in str(app.query_one("#legend").render())
        # / opens empty (typing starts a new search), the last one as its hint.
        await pilot.press("slash")
        field = app.screen.query_one("#dialog-input")
        assert field.value == "" and "umbrella" in field.placeholder
        await pilot.press(*"rain", "enter")
        await wait_until(pilot, lambda: not app.screen.is_modal, "the second search")
        assert "/rain: " in str(app.query_one("#legend").render())
        # An invalid regex is refused in the dialog, which stays open.
        await pilot.press("slash", *"(unclosed", "enter")
        assert app.screen.is_modal and "valid regular expression" in str(app.screen.query_one("#dialog-error").render())
        await pilot.press("escape")


@async_test
async def test_jumps_land_on_lowest_fidelity_highest_norm_largest_surprise():
    s = _session()
    ordinary = [t for t in s.tokens if t.role not in SPECIAL]
    best = {}
    for e in s.explanations:
        if e.score is not None and (e.index not in best or e.score.fidelity > best[e.index]):
            best[e.index] = e.score.fidelity
    by_fid = sorted((best[t.index], t.index) for t in ordinary if t.index in best)
    norms = np.array([t.norm for t in ordinary])
    probs = _next_token_probs(s)
    app = replay_app(preload=True, session=AGENT)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle_replay(pilot, app)
        await pilot.press("j")
        assert app.strip.cursor == by_fid[0][1]
        await pilot.press("j")
        assert app.strip.cursor == by_fid[1][1]
        await pilot.press("J")
        assert app.strip.cursor == by_fid[0][1]
        await pilot.press("home", "m")  # from <bos> (in no ranking): the first of the ranking
        assert app.strip.cursor == ordinary[int(np.argmax(norms))].index
        await pilot.press("home", "u")
        assert app.strip.cursor == min(probs)[1]
        # From anywhere else (here the end of the conversation) a jump starts at the top
        # of its ranking; repeating it walks down.
        by_norm = sorted(ordinary, key=lambda t: (-t.norm, t.index))
        await pilot.press("end", "m")
        assert app.strip.cursor == by_norm[0].index
        await pilot.press("m")
        assert app.strip.cursor == by_norm[1].index
        await pilot.press("left", "m")
        assert app.strip.cursor == by_norm[0].index


@async_test
async def test_role_filter_limits_the_strip_and_explain_all():
    s = dataclasses.replace(_session(), explanations=[])  # nothing explained yet
    holder = Holder()
    app = replay_app(preload=True, session=s, holder=holder)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.state.tokens and app.state.queue_depth == 0, "the session")
        for _ in range(5):
            await pilot.press("v")
            if app.strip.role_filter == "tool_call":
                break
        shown = app.strip.shown_indices
        assert shown == [t.index for t in s.tokens if t.role == "tool_call"]
        assert "only tool_call" in str(app.query_one("#legend").render())
        await pilot.press("a")
        await wait_until(pilot, lambda: any(isinstance(j, ev.ExplainAll) for j in holder.worker.jobs_seen), "job")
        job = next(j for j in holder.worker.jobs_seen if isinstance(j, ev.ExplainAll))
        assert job.indices == shown


@async_test
async def test_explain_scopes_span_and_most_surprising(monkeypatch):
    import nla_tui.ui.finding as finding

    monkeypatch.setattr(finding, "MOST_SURPRISING", 10)  # the transcript is ~130 tokens, not thousands
    s = dataclasses.replace(_session(), explanations=[])
    holder = Holder()
    app = replay_app(preload=True, session=s, holder=holder)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.state.tokens and app.state.queue_depth == 0, "the session")
        call = next(t.index for t in s.tokens if t.role == "tool_result")
        app.strip.set_cursor(call + 2)
        await pilot.press("ctrl+e", "3")  # this span: the whole tool result
        await wait_until(pilot, lambda: any(isinstance(j, ev.ExplainAll) for j in holder.worker.jobs_seen), "job")
        job = [j for j in holder.worker.jobs_seen if isinstance(j, ev.ExplainAll)][-1]
        assert job.indices == [t.index for t in s.tokens if t.role == "tool_result"]
        assert job.indices == span_around(s.tokens, call + 2)
        app.action_cancel()
        await pilot.press("ctrl+e", "4")  # the N most surprising
        await wait_until(pilot, lambda: len([j for j in holder.worker.jobs_seen
                                             if isinstance(j, ev.ExplainAll)]) == 2, "second job")
        job = [j for j in holder.worker.jobs_seen if isinstance(j, ev.ExplainAll)][-1]
        assert job.indices == sorted(i for _, i in sorted(_next_token_probs(s))[:10])


@async_test
async def test_minimap_shows_the_cursor_and_jumps_on_click_and_keys():
    app = replay_app(preload=True, session=AGENT)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle_replay(pilot, app)
        mm = app.minimap
        await pilot.press("home")
        assert mm.cursor == app.strip.cursor and mm.bucket_of(app.strip.cursor) == 0
        assert "▼" in mm.render_line(0).text
        await pilot.press("greater_than_sign")
        assert mm.bucket_of(app.strip.cursor) == 1
        cell = 3 * mm._cells_width() // 4
        await pilot.click("#minimap", offset=(len(mm.label) + cell, 0))
        assert app.strip.cursor == mm.index_at(cell)
        assert mm.bucket_of(app.strip.cursor) == cell


@async_test
async def test_chunked_capture_progress_shows_a_bar_until_the_capture_is_done():
    # The worker reports CaptureProgress per chunk of a long transcript; the bar says
    # "capturing" with the token counts and goes away with the last chunk.
    from textual.widgets import Label

    from nla_tui.ui.messages import EngineEvent
    from nla_tui.ui.widgets.status import ExplainAllBar

    app = replay_app(preload=True, session=AGENT)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle_replay(pilot, app)
        bar = app.query_one(ExplainAllBar)
        app.post_message(EngineEvent(ev.CaptureProgress(4096, 20000)))
        await wait_until(pilot, lambda: bar.display, "the capture bar")
        assert "capturing" in str(bar.query_one("#all-label", Label).render())
        assert "4,096/20,000 tokens" in str(bar.query_one("#all-eta", Label).render())
        app.post_message(EngineEvent(ev.CaptureProgress(20000, 20000)))
        await wait_until(pilot, lambda: not bar.display, "the bar to go")
