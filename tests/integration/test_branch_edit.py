"""Edit a message and re-run (issue 26, item 1) on the real demo pair (CPU, fp32): the
edited branch re-captures only from its first changed token, its prefix is the parent's
bit for bit, and every row equals capturing the edited conversation from scratch."""

from __future__ import annotations

import os

import numpy as np
import pytest

from nla_tui.core.errors import InputError
from nla_tui.core.nla.presets import DEMO_EXAMPLE
from nla_tui.core.store.transcript import load_transcript
from nla_tui.core.types import Message, Sampling


@pytest.fixture
def example_engine(demo_engine):
    """The shared demo engine holding the shipped example conversation (4 messages);
    conftest's keep_demo_engine_state gives it back as it was."""
    demo_engine.set_conversation(load_transcript(DEMO_EXAMPLE))
    return demo_engine


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


def test_edit_a_tool_result_of_an_agent_transcript(demo_engine):
    """Edit what the tool returned and see what the model makes of it: the branch's tool
    result tokens change, the assistant's answer after it is read again (kept, teacher-forced)."""
    eng = demo_engine
    eng.set_conversation(load_transcript("tests/data/agent_transcript.json"))
    tool = next(i for i, m in enumerate(eng.messages) if m.role == "tool")
    parent = eng.branch_tree().root
    branch = eng.edit_message(tool, '{"city": "Paris", "forecast": "sunny", "chance": 0.0}', label="sunny")
    assert branch.messages[tool].role == "tool" and branch.messages[tool].tool_call_id == "call_1"
    assert branch.messages[tool + 1:] == parent.messages[tool + 1:]
    d = eng.branch_diff()
    changed_roles = {branch.tokens[i].role for i in d.changed}
    assert changed_roles <= {"tool_result", "special"} and "tool_result" in changed_roles
    # The answer after the tool result is the same text, read after another result:
    # aligned to the parent's tokens, with activations that moved.
    answer = [i for i, t in enumerate(branch.tokens) if t.turn == tool + 1 and t.role == "model"]
    assert answer and all(i in d.aligned for i in answer)
    assert min(d.cos[i] for i in answer) < 1.0
    assert [t.token_id for t in branch.tokens[:branch.first_changed]] == \
        [t.token_id for t in parent.tokens[:branch.first_changed]]


def test_branch_jobs_through_the_worker(example_engine):
    """EditMessage, ExplainOnBranch (the parent's side and the shown one), SwitchBranch and
    ListBranches through the scheduler and EngineWorker the TUI and `serve` use."""
    from nla_tui.core import events as ev
    from nla_tui.core.branch_jobs import (BranchExplainDone, BranchList, BranchShown, EditMessage, ExplainOnBranch,
                                          ListBranches, SwitchBranch)
    from nla_tui.core.runtime.worker import EngineWorker

    got: list = []
    worker = EngineWorker(example_engine, got.append, autoload=False).start()
    try:
        worker.submit(EditMessage(0, 'What does "anchor" mean?', label="anchor"))
        assert worker.wait_idle(300)
        shown = next(e for e in got if isinstance(e, BranchShown))
        updated = [e for e in got if isinstance(e, ev.ConversationUpdated)]
        assert shown.created and shown.branch.id == 1 and shown.branch.label == "anchor"
        assert updated and updated[-1].messages[0].content == 'What does "anchor" mean?'
        assert got.index(updated[-1]) < got.index(shown)  # the conversation first, then the branch
        index = next(i for i in shown.diff.aligned if i > shown.diff.changed[-1] and i in shown.diff.aligned)
        fast = Sampling(max_new_tokens=8)
        got.clear()
        worker.submit(ExplainOnBranch(0, shown.diff.aligned[index], fast))  # the parent's side, not shown
        worker.submit(ExplainOnBranch(1, index, fast))  # the shown branch: the usual Explain events
        assert worker.wait_idle(300)
        other = next(e for e in got if isinstance(e, BranchExplainDone))
        done = next(e for e in got if isinstance(e, ev.ExplainDone))
        assert other.branch == 0 and other.index == shown.diff.aligned[index] and done.index == index
        assert not [e for e in got if isinstance(e, ev.JobFailed)]
        side = example_engine.branch_tree().side_by_side(1, index)
        assert side.explanation is not None and side.parent_explanation is not None
        assert side.text == side.parent_text
        got.clear()
        worker.submit(SwitchBranch(0))
        worker.submit(ListBranches())
        assert worker.wait_idle(300)
        back = next(e for e in got if isinstance(e, BranchShown))
        listed = next(e for e in got if isinstance(e, BranchList))
        assert back.branch.is_root and back.diff is None and not back.created
        assert sorted(listed.tree.branches) == [0, 1] and listed.tree.current == 0
        assert list(back.branch.explanations) == [shown.diff.aligned[index]]  # what was explained on it
        got.clear()
        worker.submit(SwitchBranch(9))
        assert worker.wait_idle(60)
        failed = next(e for e in got if isinstance(e, ev.JobFailed))
        assert failed.kind is ev.JobKind.SWITCH_BRANCH and "no branch 9" in failed.message
    finally:
        worker.stop()


def test_cli_branch_makes_a_branch_in_a_saved_session(tmp_path, demo_engine, demo_paths, demo_tokenizer):
    """`nla-tui branch` on a copy of the recorded branch session: edits the root's user turn,
    explains the changed tokens beside the parent's and keeps the branch (next id, shown)."""
    import shutil

    from nla_tui import cli
    from nla_tui.core.store.session import load_session
    from tests._support_engine import reusing_demo_loads
    from tests._support_session import BRANCH_SESSION

    d = tmp_path / "s"
    shutil.copytree(BRANCH_SESSION, d)
    with reusing_demo_loads(demo_tokenizer, demo_paths, demo_engine, models=("subject", "av", "ar")):
        code = cli.main(["branch", str(d), "--message", "1", "--text", "Should I take sunglasses in Paris today?",
                         "--from", "0", "--label", "sunglasses", "--explain", "changed", "--max-explain-tokens", "8",
                         "--preset", "demo", "--device", "cpu", "--quant", "fp32", "--no-cache"])
    assert code == 0
    s = load_session(d)
    tree = s.branch_tree()
    new = tree.get(2)
    assert s.current_branch == 2 and new.parent == 0 and new.label == "sunglasses" and new.edited == 1
    assert "sunglasses" in new.messages[1].content and tree.get(1).label == "sunny forecast"  # the old one kept
    d2 = tree.diff(2)
    assert d2.changed and set(new.explanations) == set(d2.changed)


def test_cli_branch_refuses_bad_edits_before_loading_models(tmp_path, monkeypatch, capsys):
    import shutil

    from nla_tui import cli
    from nla_tui.core.runtime import engine as engine_mod
    from tests._support_session import BRANCH_SESSION

    def no_models(*a, **k):
        raise AssertionError("a model was loaded")
    monkeypatch.setattr(engine_mod.Engine, "load", no_models)
    d = tmp_path / "s"
    shutil.copytree(BRANCH_SESSION, d)
    cases = [(["--message", "5", "--text", "x"], "out of range: the conversation has 5 messages"),
             (["--message", "1", "--text", " "], "is empty"),
             (["--message", "3", "--text", "x", "--from", "3"], "no branch 3"),
             (["--message", "1", "--text", "x", "--label", "y" * 300], "at most 200 characters"),
             (["--message", "1", "--text", "x", "--explain", "all"], "would explain every token"),
             (["--message", "1"], "needs --message M")]
    for extra, words in cases:
        assert cli.main(["branch", str(d), *extra]) == 2
        assert words in capsys.readouterr().err
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if str(p).startswith(str(d)) else real_access(p, mode))
    assert cli.main(["branch", str(d), "--message", "1", "--text", "x"]) == 2
    assert "is read-only" in capsys.readouterr().err


def test_a_steer_on_a_shown_branch_records_the_branch(example_engine):
    from nla_tui.core.runtime.steer import steer

    eng = example_engine
    branch = eng.edit_message(0, 'What does "anchor" mean?')
    i = branch.first_changed
    result = steer(eng, i, 'Token " ship" after "does". Next: "?"', 0.5, "here", 2,
                   original=f'Token "{branch.tokens[i].text}" after "does". Next: "?"')
    assert result.branch == branch.id and result.token_text == branch.tokens[i].text
    eng.switch_branch(0)
    assert steer(eng, i, "x", 0.5, "here", 2, original="y").branch is None
