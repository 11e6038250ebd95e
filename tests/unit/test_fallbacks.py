"""Issue 23 item 5: the AV's fallbacks flagged (core/nla/explain.py, core/fallbacks.py).

Each detector fires on a crafted case and not on the recorded session's good explanations
(tests/data/recorded_session: real demo-pair output, AR labels good or mediocre)."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from nla_tui.core.fallbacks import (GENERIC_WARNING, REPETITION_WARNING, is_near_duplicate_warning,
                                    near_duplicates, with_near_duplicates)
from nla_tui.core.nla.av import parse_explanation
from nla_tui.core.nla.explain import warnings_for
from nla_tui.core.store.export import to_json, to_markdown
from nla_tui.core.store.session import load_session
from nla_tui.core.types import TRUNCATED_WARNING, Explanation, Sampling
from nla_tui.ui.state import UiState
from nla_tui.ui.widgets.explanation import render_token
from tests._support_paths import DATA

RECORDED = DATA / "recorded_session"


@pytest.fixture(scope="module")
def session():
    return load_session(RECORDED)


def built_warnings(raw: str) -> list[str]:
    """The warnings `finish` gives an AV output, scored (the score itself is not under test)."""
    text, truncated = parse_explanation(raw)
    return warnings_for(raw, truncated, None, "\u2603", scored=False, text=text)


@pytest.mark.parametrize("raw, expected", [
    ("<explanation>I cannot tell what this token is about.</explanation>", GENERIC_WARNING),
    ("<explanation>There is not enough context to say.</explanation>", GENERIC_WARNING),
    ("<explanation>Unclear.</explanation>", GENERIC_WARNING),
    ("<explanation>The user asks about the tower the tower the tower the tower.</explanation>", REPETITION_WARNING),
    ("<explanation>Paris Paris Paris Paris Paris Paris Paris</explanation>", REPETITION_WARNING),
    ("<explanation>The capital of France, a landmark", TRUNCATED_WARNING),
])
def test_each_per_explanation_detector_fires_on_a_crafted_case(raw, expected):
    assert expected in built_warnings(raw)


def test_per_explanation_detectors_pass_the_recorded_good_explanations(session):
    good = [e for e in session.explanations if e.score and e.score.label != "poor"]
    assert len(good) >= 25
    for e in good:
        assert built_warnings(f"<explanation>{e.text}</explanation>") == [], (e.index, e.text)
    # ...while the recorded session's own degenerate loop (" in in in in ...", fve < 0) is caught
    loop = next(e for e in session.explanations if e.index == 31)
    assert REPETITION_WARNING in built_warnings(f"<explanation>{loop.text}</explanation>")


def _exp(index: int, text: str) -> Explanation:
    return Explanation(index=index, text=text, raw=text, sampling=Sampling())


def test_near_duplicate_fires_for_one_text_across_different_tokens_only():
    same = "A discussion of famous landmarks in European capitals and their history."
    exps = [_exp(1, same), _exp(2, same + " Mostly Paris."), _exp(3, same), _exp(4, "Something else entirely here.")]
    tokens = {1: " Eiffel", 2: " Tower", 3: " is", 4: " in"}
    assert set(near_duplicates(exps, tokens)) == {0, 1, 2}
    # the same token in a repeated context legitimately gets the same text
    assert near_duplicates(exps, {1: " Eiffel", 2: " Eiffel", 3: " Eiffel", 4: " in"}) == {}
    flagged = with_near_duplicates(exps, tokens)
    assert [any(is_near_duplicate_warning(w) for w in e.warnings) for e in flagged] == [True, True, True, False]
    # a stale flag (from an earlier, larger set) is dropped when the set no longer shows it
    again = with_near_duplicates([flagged[0], flagged[3]], tokens)
    assert not any(is_near_duplicate_warning(w) for e in again for w in e.warnings)


def test_near_duplicate_passes_the_recorded_session(session):
    tokens = {t.index: t.text for t in session.tokens}
    assert near_duplicates(session.explanations, tokens) == {}


def test_near_duplicate_is_shown_by_the_pane_and_the_markdown_export(session):
    """Explanations written one at a time (`e`) carry no cross-position warning; the UI's
    state and the export find it over everything held."""
    same = "A discussion of famous landmarks in European capitals and their history."
    exps = list(session.explanations)
    for k in (5, 6, 7):
        exps[k] = replace(exps[k], text=same, warnings=[])
    state = UiState(tokens=session.tokens)
    state.explanations = {e.index: [e] for e in exps}
    pane = render_token(state, 6).plain
    assert "near-identical to the explanations of 2 other positions" in pane
    assert "near-identical" not in render_token(state, 4).plain
    # the cache follows the held explanations: replace one and the others lose a partner
    state.explanations[7] = [session.explanations[7]]
    assert not any(is_near_duplicate_warning(w) for w in state.warnings(6))
    md = to_markdown(replace(session, explanations=exps))
    row = next(line for line in md.splitlines() if line.startswith("| 5 |"))
    assert "near-identical" in row
    doc = json.loads(to_json(replace(session, explanations=exps)))
    assert [e["index"] for e in doc["explanations"] if any(is_near_duplicate_warning(w) for w in e["warnings"])] \
        == [5, 6, 7]
