"""Edit a message and re-run (issue 26, item 1) on the real demo pair (CPU, fp32): the
edited branch re-captures only from its first changed token, its prefix is the parent's
bit for bit, and every row equals capturing the edited conversation from scratch."""

from __future__ import annotations

import numpy as np
import pytest

from nla_tui.core.errors import InputError
from nla_tui.core.nla.presets import DEMO_EXAMPLE
from nla_tui.core.store.transcript import load_transcript
from nla_tui.core.types import Message, Sampling


@pytest.fixture
def example_engine(demo_engine):
    """The shared demo engine holding the shipped example conversation (4 messages),
    given back with its own conversation afterwards."""
    before = list(demo_engine.messages)
    demo_engine.set_conversation(load_transcript(DEMO_EXAMPLE))
    yield demo_engine
    demo_engine.set_conversation(before)


def test_edit_recaptures_only_the_suffix_and_keeps_the_prefix_bit_for_bit(example_engine):
    eng = example_engine
    root = eng.branch_tree().root
    parent_acts, parent_ids = root.activations.copy(), [t.token_id for t in root.tokens]
    last = len(eng.messages) - 1
    tokens_before = eng.counters["subject_tokens"]

    branch = eng.edit_message(last, "Use sorted(a, reverse=True) to get a new list.")

    ids = [t.token_id for t in branch.tokens]
    first = branch.first_changed
    assert 0 < first < len(ids) and ids[:first] == parent_ids[:first] and ids[first] != parent_ids[first]
    # Only the suffix ran: the subject's decoder saw len - start positions, start after 0.
    ran = eng.counters["subject_tokens"] - tokens_before
    start = eng.last_recapture["start"]
    assert 0 < start <= first and ran == len(ids) - start < len(ids)
    # The unchanged prefix: the parent's rows, bit for bit.
    assert np.array_equal(branch.activations[:first], parent_acts[:first])
    assert branch.activations.tobytes()[:first * parent_acts.shape[1] * 4] == parent_acts[:first].tobytes()
    # The whole branch equals capturing the edited conversation from scratch (the KV reuse is exact).
    fresh = eng.subject.capture(ids)
    assert np.array_equal(branch.activations, fresh.activations)
    assert [[c.token_id for c in t.top] for t in branch.tokens] == fresh.top_ids.tolist()
    # The engine now shows the branch; the root is untouched.
    assert eng.messages[last].content.startswith("Use sorted") and eng.branches.current == branch.id
    assert np.array_equal(root.activations, parent_acts)


def test_bad_edits_are_refused_before_any_model_work(example_engine):
    eng = example_engine
    calls = dict(eng.counters)
    n = len(eng.messages)
    for message, text, words in [(n, "x", "out of range"), (-1, "x", "out of range"), (0, "  ", "empty"),
                                 (0, eng.messages[0].content, "same as its current text")]:
        with pytest.raises(InputError, match=words):
            eng.edit_message(message, text)
    with pytest.raises(InputError, match="no branch 7"):
        eng.edit_message(0, "Hello?", parent=7)
    assert eng.counters == calls and len(eng.branch_tree().branches) == 1
