"""UiState folds the branch events (issue 26 item 1) and the SessionKeeper saves the tree
it holds: no model, no app. Data: the real recorded branch session (tests/data/branch_session)."""

from nla_tui.core import events as ev
from nla_tui.core.branch_jobs import BranchExplainDone, BranchList, BranchShown
from nla_tui.core.store.session import load_session
from nla_tui.ui.saving import SessionKeeper
from nla_tui.ui.state import UiState
from tests._support_paths import DATA

SESSION = DATA / "branch_session"


def _shown(tree, branch_id: int, created: bool = False):
    tree = tree.snapshot()
    tree.current = branch_id
    b = tree.shown
    return [ev.ConversationUpdated(list(b.messages), list(b.tokens), b.activations),
            BranchShown(b, tree, tree.diff(branch_id), created)]


def _state_on_root(session):
    st = UiState(info=session.info)
    st.apply(ev.ConversationUpdated(list(session.messages), list(session.tokens), session.activations))
    for i, exps in session.branch_tree().root.explanations.items():
        st.apply(ev.ExplainDone(i, exps))
    tree = session.branch_tree()
    tree.current = 0  # as the replay starts (the session was saved on branch 1)
    st.apply(BranchList(tree.snapshot()))
    return st


def test_branch_shown_brings_the_branchs_own_explanations_and_its_diff():
    session = load_session(SESSION)
    st = _state_on_root(session)
    assert st.current_branch == 0 and st.changed == frozenset() and st.parent_side(86) is None
    changes = [st.apply(e) for e in _shown(session.branch_tree(), 1, created=True)]
    assert changes[-1].branch and changes[-1].branch_created
    assert st.current_branch == 1 and st.changed == {69, 77}
    branch = session.branches[0]
    # The branch's explanations replace those held (token ids equal after the edit, activations not).
    assert set(st.explanations) == set(branch.explanations)
    parent, j = st.parent_side(86)
    assert parent.id == 0 and j == 86 and parent.best(86) is not None
    assert st.note_branch == 1


def test_branch_explain_done_fills_the_parent_and_a_new_conversation_drops_the_tree():
    session = load_session(SESSION)
    st = _state_on_root(session)
    for e in _shown(session.branch_tree(), 1):
        st.apply(e)
    ex = session.branches[0].explanations[69][0]
    change = st.apply(BranchExplainDone(0, 70, [ex]))
    assert change.branch_explained == (0, 70) and st.branches.branches[0].best(70) == ex
    # A chat turn grows the shown branch; another conversation is not in the tree.
    grown = list(st.messages) + [session.messages[1]]
    st.apply(ev.ChatStarted(list(st.tokens)))
    st.apply(ev.ConversationUpdated(grown, list(st.tokens), None))
    assert st.current_branch == 1 and st.shown_branch.messages == grown
    st.apply(ev.ConversationUpdated(session.messages[:2], session.tokens[:30], None))
    assert st.branches is None and st.changed == frozenset() and st.current_branch == 0


def test_a_saved_sessions_tree_survives_its_capture_until_adopted():
    session = load_session(SESSION)
    st = UiState(info=session.info)
    st.show_session(session)
    st.adopting = st.branches
    st.apply(ev.ConversationUpdated(list(session.messages), list(session.tokens), session.activations))
    assert st.branches is not None and set(st.branches.branches) == {0, 1} and st.current_branch == 0
    st.apply(ev.JobFailed(ev.JobKind.ADOPT_BRANCHES, "refused"))
    assert st.adopting is None and st.branches is not None  # still saved with the session


def test_the_keeper_saves_the_root_as_the_sessions_own_and_every_branch_beside_it():
    session = load_session(SESSION)
    st = _state_on_root(session)
    keeper = SessionKeeper(st)
    for e in _shown(session.branch_tree(), 1):
        keeper.observe(st.apply(e))
    ex = session.branches[0].explanations[69][0]
    st.apply(ev.ExplainDone(70, [ex]))  # a new explanation on the shown branch
    saved = keeper.snapshot()
    assert saved.messages == session.messages and saved.tokens == session.tokens
    assert saved.current_branch == 1 and [b.id for b in saved.branches] == [1]
    assert sorted({e.index for e in saved.explanations}) == sorted({e.index for e in session.explanations})
    assert 70 in saved.branches[0].explanations and saved.branches[0].messages == session.branches[0].messages
    assert saved.activations is not None and saved.activations.shape[0] == len(session.tokens)
