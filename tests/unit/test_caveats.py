"""Warnings made once in core.caveats and shown everywhere: the TUI's pane, the `run`
table (test_core_cli_worker) and the Markdown / JSON / HTML exports. An explanation of a
special or early token is never called "good", whatever its score."""

from __future__ import annotations

import dataclasses
import json
import re

from nla_tui.core.caveats import UNRELIABLE, grouped, median_norm, position_caveats, verdict
from nla_tui.core.nla.av import streaming_text
from nla_tui.core.runtime.progress import RowProgress
from nla_tui.core.store.export import to_html, to_json, to_markdown
from nla_tui.core.types import Explanation, Sampling, Score, TokenInfo
from nla_tui.ui.state import UiState
from nla_tui.ui.widgets.explanation import render_token
from tests._support_session import make_session

GOOD = Score(cos=0.99, mse_nrm=0.02, fve_nrm=0.69)  # "good" by its numbers alone


def _tokens(n: int = 14) -> list[TokenInfo]:
    roles = ["bos", "special", "user"] + ["user"] * (n - 3)
    return [TokenInfo(i, 100 + i, f"w{i}", roles[i], 0, 500.0 if i == 12 else 10.0) for i in range(n)]


def test_special_early_and_outlier_positions_are_flagged_and_never_good():
    toks = _tokens()
    kinds = {i: [c.kind for c in position_caveats(toks, i)] for i in range(len(toks))}
    assert kinds[0] == ["special", "early"] and kinds[1] == ["special", "early"]
    assert kinds[5] == ["early"] and kinds[11] == [] and kinds[12] == ["outlier"]
    assert verdict(GOOD, position_caveats(toks, 0)) == UNRELIABLE
    assert verdict(GOOD, position_caveats(toks, 12)) == UNRELIABLE
    assert verdict(GOOD, position_caveats(toks, 11)) == "good"
    poor = Score(0.5, 1.0, 0.1)
    assert verdict(poor, position_caveats(toks, 0)) == "poor"  # bad news needs no caveat
    # Headless output groups the positions of each kind in one line.
    median = median_norm(toks)
    lines = grouped({i: position_caveats(toks, i, median) for i in (0, 1, 2, 3, 7, 12)},
                    {11: ["the explanation repeats a phrase"]})
    assert lines[0].startswith("tokens 0-1: special tokens") and lines[1].startswith("tokens 0-3, 7: in the first 10")
    assert lines[2].startswith("token 12: activation norm") and lines[3] == "token 11: the explanation repeats a phrase"


def test_the_pane_says_unreliable_and_why_at_bos():
    st = UiState()
    st.set_tokens(_tokens())
    st.explanations[0] = [Explanation(0, 'Token " string" after "x".', "raw", Sampling(), score=GOOD)]
    st.explanations[11] = [Explanation(11, "a word", "raw", Sampling(), score=GOOD)]
    bos, plain = render_token(st, 0).plain, render_token(st, 11).plain
    assert " unreliable " in bos and " good " not in bos and "special token" in bos and "first 10" in bos
    assert " good " in plain and "⚠" not in plain


def test_exports_carry_the_verdicts_and_warnings_of_the_pane():
    s = make_session()
    s.explanations = [dataclasses.replace(e, score=GOOD, warnings=["the explanation repeats a phrase"])
                      if k == 0 else dataclasses.replace(e, score=GOOD) for k, e in enumerate(s.explanations)]
    flagged = {e.index for e in s.explanations if position_caveats(s.tokens, e.index)}
    assert flagged  # the fixture explains early tokens
    md = to_markdown(s)
    rows = {int(m.group(1)): m.group(0) for m in re.finditer(r"^\| (\d+) \|.*$", md, re.M)}
    for e in s.explanations:
        assert ("| unreliable |" in rows[e.index]) == (e.index in flagged)
        assert ("in the first 10 tokens" in rows[e.index]) == (e.index < 10)
    assert "repeats a phrase" in rows[s.explanations[0].index]
    doc = json.loads(to_json(s))
    assert {int(i) for i in doc["position_warnings"]} >= flagged
    assert all(e["verdict"] == (UNRELIABLE if e["index"] in flagged else "good") for e in doc["explanations"])
    data = json.loads(re.search(r'<script id="nla-data" type="application/json">(.*?)</script>',
                                to_html(s), re.S).group(1))
    assert data["tokens"][0]["warnings"] and data["explanations"][str(min(flagged))][0]["verdict"] == UNRELIABLE


def test_streamed_text_never_shows_the_tags():
    assert streaming_text("<expl") == ""
    assert streaming_text("<explanation>Token \"a\" aft") == 'Token "a" aft'
    assert streaming_text("<explanation>Token.</expl") == "Token."
    assert streaming_text("<explanation>Token.</explanation>\nmore") == "Token."


def test_row_progress_moves_per_row_never_back_and_knows_its_rate_from_the_first_row():
    now = [0.0]
    seen = []
    p = RowProgress(10, already=2, report=lambda p: seen.append((p.done, p.eta_s)), clock=lambda: now[0])
    assert p.eta_s is None
    now[0] = 4.0
    p.row_done(0)  # the first fresh row, 4 s in: 1 row / 4 s, 7 left
    assert seen[-1] == (3, 28.0)
    p.row_done(3)
    p.batch_done(4)  # the batch of 4 handed back (2 closed early, 2 ran to the limit)
    assert [d for d, _ in seen] == [3, 4, 6]
    # Parked: all AV passes close rows before any is handed back; the count never drops.
    q = RowProgress(6)
    for r in range(5):
        q.row_done(r)
    q.batch_done(3)
    assert q.done == 5
    q.batch_done(3)
    assert q.done == 6
