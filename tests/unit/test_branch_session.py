"""The branch tree in sessions and exports (issue 26, item 1), without a model: the real
recorded branch session (tests/data/branch_session, made by record_branch_session on the
demo pair) round-trips, sessions saved before the schema bump still open, a damaged tree
is refused naming the field, exports carry the tree with every text escaped, and the
read-only replay serves a branch switch from what was recorded."""

from __future__ import annotations

import json
import shutil

import pytest

from nla_tui.core.branch_tree import Branch, BranchTree, diff_branches, edited_messages
from nla_tui.core.errors import InputError
from nla_tui.core.store.export import to_html, to_json, to_markdown
from nla_tui.core.store.session import SCHEMA_VERSION, load_session, save_session
from nla_tui.core.types import Explanation, Message, Sampling, Score, TokenInfo
from tests._support_session import BRANCH_SESSION, make_session


def _copy(tmp_path, src=BRANCH_SESSION):
    dst = tmp_path / "s"
    shutil.copytree(src, dst)
    return dst


def test_the_recorded_branch_tree_survives_save_and_reopen(tmp_path):
    s = load_session(BRANCH_SESSION)
    tree = s.branch_tree()
    assert sorted(tree.branches) == [0, 1] and tree.current == 1 == s.current_branch
    b = tree.get(1)
    assert b.parent == 0 and b.label == "sunny forecast" and b.messages[b.edited].role == "tool"
    assert "sunny" in b.messages[b.edited].content and "rain" in s.messages[b.edited].content
    assert b.explanations and s.explanations
    d = tree.diff(1)
    assert d.first_changed == b.first_changed and d.changed and all(i in d.aligned for i in range(d.first_changed))
    copy = _copy(tmp_path)
    before = json.loads((copy / "session.json").read_text())
    save_session(load_session(copy), copy)
    after = json.loads((tmp_path / "s" / "session.json").read_text())
    assert after["branches"] == before["branches"] and after["current_branch"] == 1
    assert load_session(tmp_path / "s").branch_tree().get(1).to_json() == b.to_json()


@pytest.mark.parametrize("old", ["tests/data/recorded_session", "tests/data/agent_session"])
def test_sessions_from_before_the_branch_tree_still_open(tmp_path, old):
    doc = json.loads(open(f"{old}/session.json").read())
    assert doc["schema_version"] < SCHEMA_VERSION and "branches" not in doc  # fixtures from before the bump
    s = load_session(old)
    assert s.branches == [] and s.current_branch == 0
    tree = s.branch_tree()
    assert list(tree.branches) == [0] and tree.root.tokens == s.tokens
    save_session(s, _copy(tmp_path, old))  # and saves as the current schema
    written = json.loads((tmp_path / "s" / "session.json").read_text())
    assert written["schema_version"] == SCHEMA_VERSION and written["branches"] == [] and written["current_branch"] == 0


@pytest.mark.parametrize("damage, words", [
    (lambda d: d["branches"][0].__setitem__("parent", "0"), "branches[0].parent must be a whole number"),
    (lambda d: d["branches"][0].__setitem__("id", 0), "branches[0].id must be a whole number of at least 1"),
    (lambda d: d["branches"][0].__setitem__("parent", 4), "parent 4 is not an earlier branch"),
    (lambda d: d["branches"].append(dict(d["branches"][0])), "branch 1 appears twice"),
    (lambda d: d["branches"][0].__setitem__("edited", 40), "edits message 40"),
    (lambda d: d.__setitem__("current_branch", 7), "shown branch 7 does not exist"),
    (lambda d: d["branches"][0]["explanations"][0].__setitem__("index", 500), "explanation for token 500"),
    (lambda d: d["branches"][0]["tokens"][0].__setitem__("token_id", "x"), "branches[0].tokens[0].token_id"),
])
def test_a_damaged_branch_tree_is_refused_naming_what_is_wrong(tmp_path, damage, words):
    d = _copy(tmp_path)
    doc = json.loads((d / "session.json").read_text())
    damage(doc)
    raw = json.dumps(doc)
    (d / "session.json").write_text(raw)
    with pytest.raises(InputError, match=words.replace("[", r"\[").replace("]", r"\]")):
        load_session(d)
    assert (d / "session.json").read_text() == raw  # left untouched


def _tokens(ids, texts=None):
    return [TokenInfo(k, i, (texts or {}).get(i, f"t{i}"), "user", 0, 1.0, []) for k, i in enumerate(ids)]


def test_diff_marks_changed_tokens_and_pairs_the_rest():
    import numpy as np

    parent = Branch(0, None, None, [], _tokens([1, 2, 3, 4, 5, 6]), activations=np.eye(6, 4, dtype=np.float32))
    child = Branch(1, 0, 0, [], _tokens([1, 2, 9, 9, 9, 5, 6]), activations=np.eye(7, 4, dtype=np.float32))
    d = diff_branches(parent, child)
    assert d.first_changed == 2 and d.changed == [2, 3, 4] and d.removed == [2, 3]
    assert d.aligned == {0: 0, 1: 1, 5: 4, 6: 5}
    assert d.cos[0] == pytest.approx(1.0) and d.cos[5] == pytest.approx(0.0)
    same_length = diff_branches(parent, Branch(1, 0, 0, [], _tokens([1, 2, 7, 4, 5, 6])))
    assert same_length.changed == [2] and same_length.aligned[2] == 2 and same_length.cos == {}


def test_edits_are_checked_before_any_model_work():
    msgs = [Message("user", "hi"), Message("assistant", "hello")]
    assert edited_messages(msgs, 1, "bye")[1] == Message("assistant", "bye") and msgs[1].content == "hello"
    for index, text, words in [(2, "x", r"out of range: the conversation has 2 messages \(0..1\)"),
                               (True, "x", "by its number"), (0, "", "empty"), (0, "hi", "same as its current")]:
        with pytest.raises(InputError, match=words):
            edited_messages(msgs, index, text)
    with pytest.raises(InputError, match="no branch 3"):
        BranchTree.of(msgs, _tokens([1, 2])).get(3)


def test_a_branch_gives_back_only_its_explanations_of_that_sampling_and_refuses_a_token_beyond_it():
    """What ExplainOnBranch answers from memory (the local and the remote worker both ask)."""
    s = make_session(n_tokens=15)
    b = s.branch_tree().add(0, 0, list(s.messages), list(s.tokens))
    greedy, sampled = Sampling(), Sampling(temperature=0.7)
    b.explanations = {5: [Explanation(5, "greedy", "raw", greedy), Explanation(5, "warm", "raw", sampled)]}
    assert [e.text for e in b.kept_explanations(5, greedy, None)] == ["greedy"]
    assert [e.text for e in b.kept_explanations(5, sampled, None)] == ["warm"]
    assert b.kept_explanations(5, greedy, "another prompt") == [] and b.kept_explanations(6, greedy, None) == []
    with pytest.raises(InputError, match=r"Token 15 is out of range: branch 1 has 15 tokens \(0..14\)"):
        b.kept_explanations(15, greedy, None)


def _hostile_session():
    """A format-level session with a branch whose texts try to break out of each export."""
    s = make_session(n_tokens=15)
    tree = s.branch_tree()
    hostile = "</script><img src=x onerror=alert(1)> **bold** \x1b[2J"
    messages = list(s.messages)
    messages[0] = Message("user", hostile)
    tokens = [TokenInfo(t.index, t.token_id + (100 if t.index == 5 else 0), hostile if t.index == 5 else t.text,
                        t.role, t.turn, t.norm, t.top) for t in s.tokens]
    b = tree.add(0, 0, messages, tokens, label="<b>label</b>")
    b.explanations = {5: [Explanation(5, hostile, hostile, Sampling(), score=Score(0.9, 0.2, 0.7))]}
    tree.current = b.id
    s.set_branches(tree)
    return s, hostile


def test_exports_carry_the_branch_tree_escaped(tmp_path):
    s, hostile = _hostile_session()
    save_session(s, tmp_path / "h")  # a valid tree (the save checks it)
    s = load_session(tmp_path / "h")
    md, page, doc = to_markdown(s), to_html(s), json.loads(to_json(s))
    assert "## Branches" in md and "Branch 1 (from 0): message 0 edited" in md and "0.700" in md
    assert "</script>" not in md.split("## Branches")[1] and "\x1b" not in md and "\\*\\*bold\\*\\*" in md
    section = page.split('<section id="branches">')[1]
    assert "&lt;/script&gt;&lt;img" in section and "&lt;b&gt;label&lt;/b&gt;" in section
    assert "<img" not in section and "\x1b" not in page and "<mark>" in section
    assert doc["branches"][0]["changed"] == [5] and doc["branches"][0]["label"] == "<b>label</b>"
    assert doc["current_branch"] == 1


def test_the_real_branch_session_exports(tmp_path):
    s = load_session(BRANCH_SESSION)
    md, page = to_markdown(s), to_html(s)
    assert "sunny" in md.split("## Branches")[1] and "rain" in md.split("## Branches")[1]
    assert page.count('class="branch"') == 1 and "sunny forecast" in page


def test_replay_switches_to_a_recorded_branch():
    """`nla-tui open` (no models): the branch list, a switch and a recorded explanation on
    the parent's side come from the session; an edit asks for the models."""
    from nla_tui.core import events as ev
    from nla_tui.core.branch_jobs import BranchExplainDone, BranchList, BranchShown, EditMessage, ExplainOnBranch, \
        SwitchBranch
    from nla_tui.core.runtime.replay import ReplayWorker

    got: list = []
    s = load_session(BRANCH_SESSION)
    worker = ReplayWorker(s, got.append, preload=True).start()
    try:
        assert worker.wait_idle(10)
        assert any(isinstance(e, BranchList) and sorted(e.tree.branches) == [0, 1] for e in got)
        got.clear()
        worker.submit(SwitchBranch(1))
        parent_index = next(iter(s.branch_tree().diff(1).aligned.values()))
        explained_root = sorted({e.index for e in s.explanations})[0]
        worker.submit(ExplainOnBranch(0, explained_root))
        worker.submit(EditMessage(0, "hello"))
        assert worker.wait_idle(10)
        shown = next(e for e in got if isinstance(e, BranchShown))
        assert shown.branch.id == 1 and shown.diff.changed and shown.branch.explanations
        updated = next(e for e in got if isinstance(e, ev.ConversationUpdated))
        assert "sunny" in updated.messages[shown.branch.edited].content
        done = next(e for e in got if isinstance(e, BranchExplainDone))
        assert done.branch == 0 and done.index == explained_root and parent_index is not None
        failed = next(e for e in got if isinstance(e, ev.JobFailed))
        assert failed.kind is ev.JobKind.EDIT_MESSAGE and "models" in failed.message
    finally:
        worker.stop()


def test_a_steer_made_on_a_branch_counts_that_branchs_tokens(tmp_path):
    """A steered continuation made while a branch was shown points at the branch's tokens,
    which may lie past the end of the conversation as captured."""
    from nla_tui.core.steer_results import SteerResult

    s, _ = _hostile_session()
    longer = s.branches[0]
    longer.tokens = longer.tokens + [TokenInfo(15, 7, "!", "user", 0, 1.0, [])]
    s.steered = [SteerResult(15, "!", 6, "a", "b", 0.5, "here", 1.0, branch=1)]
    save_session(s, tmp_path / "a")
    again = load_session(tmp_path / "a")
    assert again.steered[0].branch == 1 and again.steered[0].index == 15
    assert "of branch 1" in to_markdown(again)
    s.steered[0].branch = None  # the same index on the conversation itself is out of range
    with pytest.raises(InputError, match=r"steered continuation for token 15, but the session has 15 tokens \(0..14\)"):
        save_session(s, tmp_path / "b")
    s.steered[0].branch = 9
    with pytest.raises(InputError, match="branch 9, which the session does not have"):
        save_session(s, tmp_path / "c")
