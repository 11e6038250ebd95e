"""The extra AV/AR pair without a model (issue 26 item 3): --extra-pair's syntax, its job
in the scheduler, and the recorded pair session (tests/data/pair_session: `nla-tui run
--preset demo --example --explain 17-19 --extra-pair av=COPY/av,ar=COPY/ar,label=copy --out
DIR` over a hub-layout copy of the demo pair, tests/_support_pair.py) through save, reopen,
the schema check and every export."""

from __future__ import annotations

import json
import shutil

import pytest

from nla_tui.core import events as ev
from nla_tui.core.errors import InputError
from nla_tui.core.options import PairSpec, from_args, parse_pair_spec
from nla_tui.core.pair_jobs import EXTRA, ExplainWithPair
from nla_tui.core.runtime.scheduler import Scheduler
from nla_tui.core.store.export import to_html, to_json, to_markdown
from nla_tui.core.store.session import load_session, save_session
from tests._support_paths import DATA

PAIR_SESSION = DATA / "pair_session"


def test_the_pair_spec_reads_av_ar_and_an_optional_label():
    assert parse_pair_spec("av=/a,ar=/b") == PairSpec("/a", "/b", "")
    assert parse_pair_spec(" ar = /b , av=/a , label=L12 recipe ") == PairSpec("/a", "/b", "L12 recipe")
    from argparse import Namespace

    assert from_args(Namespace(extra_pair="av=/a,ar=/b,label=x")).extra_pair == PairSpec("/a", "/b", "x")
    assert from_args(Namespace()).extra_pair is None


@pytest.mark.parametrize("spec, says", [
    ("/a", "is not av=…"), ("av=/a", "has no ar=DIR"), ("ar=/b", "has no av=DIR"), ("", "is not av=…"),
    ("av=/a,ar=/b,layer=3", "is not av=…"), ("av=/a,av=/c,ar=/b", "names av= twice"),
    ("av=,ar=/b", "has no av=DIR"), ("av=/a,ar=/b,label=" + "x" * 41, "at most 40"),
    ("av=/a,ar=/b,label=a\x1bb", "printable"),
])
def test_a_bad_pair_spec_is_one_line_naming_the_fix(spec, says):
    with pytest.raises(InputError) as e:
        parse_pair_spec(spec)
    assert says in str(e.value) and "\n" not in str(e.value) and "--extra-pair" in str(e.value)


def test_a_pair_explain_is_a_cursor_job_beside_the_main_one():
    s = Scheduler()
    s.submit(ev.Explain(3))
    s.submit(ExplainWithPair(3))
    s.submit(ExplainWithPair(4))  # replaces the queued pair job, not the main one
    assert [(type(j).__name__, j.index) for j in s.queued()] == [("Explain", 3), ("ExplainWithPair", 4)]
    running = s.take()
    s.submit(ExplainWithPair(3))  # the same token with the other pair: still wanted
    assert running.index == 3 and not s.cancel.is_set()
    s.submit(ExplainWithPair(5))  # the cursor moved on: the running explain is stale
    assert s.cancel.is_set()
    s.finish()
    pair_job = s.take()
    assert isinstance(pair_job, ExplainWithPair) and pair_job.pair == EXTRA and pair_job.key == "explain-pair:extra"
    s.submit(ev.Explain(9))  # a main-pair explain of another token makes the pair's stale too
    assert s.cancel.is_set()
    assert ev.JobKind.EXPLAIN_PAIR.is_explain and ev.JobKind.EXPLAIN_PAIR.words


def test_the_recorded_pair_session_round_trips(tmp_path):
    s = load_session(PAIR_SESSION)
    assert s.extra_pair is not None and s.extra_pair.label == "copy" and s.extra_pair.layer == s.info.layer
    assert sorted(e.index for e in s.pair_explanations) == [17, 18, 19]
    assert {e.index for e in s.explanations} == {17, 18, 19}
    copy = tmp_path / "s"
    shutil.copytree(PAIR_SESSION, copy)
    save_session(load_session(copy), copy)
    again = load_session(copy)
    assert again.extra_pair.to_json() == s.extra_pair.to_json()
    assert [e.to_json() for e in again.pair_explanations] == [e.to_json() for e in s.pair_explanations]


def test_a_session_without_an_extra_pair_saves_as_before(tmp_path):
    old = load_session(DATA / "recorded_session")
    assert old.extra_pair is None and old.pair_explanations == []
    save_session(old, tmp_path / "s")
    doc = json.loads((tmp_path / "s" / "session.json").read_text())
    assert "extra_pair" not in doc and "extra_explanations" not in doc


@pytest.mark.parametrize("damage, says", [
    (lambda d: d["extra_pair"].pop("models"), "extra_pair.models is missing"),
    (lambda d: d["extra_pair"].update(label=3), "extra_pair.label must be a string"),
    (lambda d: d["extra_explanations"][0].update(index="17"), "extra_explanations[0].index must be a whole number"),
    (lambda d: d["extra_explanations"][0].update(index=500), "extra-pair explanation for token 500"),
    (lambda d: d.update(extra_pair=None), "extra-pair explanations but no extra_pair"),
])
def test_a_damaged_extra_pair_is_refused_naming_the_field(tmp_path, damage, says):
    copy = tmp_path / "s"
    shutil.copytree(PAIR_SESSION, copy)
    doc = json.loads((copy / "session.json").read_text())
    damage(doc)
    (copy / "session.json").write_text(json.dumps(doc))
    with pytest.raises(InputError) as e:
        load_session(copy)
    assert says in str(e.value)


def test_exports_show_the_extra_pair_beside_the_main_one():
    s = load_session(PAIR_SESSION)
    best = {e.index: e for e in s.pair_explanations}
    md = to_markdown(s)
    assert "## Extra pair: copy (layer 12;" in md
    section = md[md.index("## Extra pair"):]
    assert all(f"| {i} |" in section for i in best)
    assert f"{best[17].score.cos:.3f}" in section
    page = to_html(s)
    assert '<section id="extra-pair">' in page and "Extra pair: copy" in page
    doc = json.loads(to_json(s))
    assert doc["extra_pair"]["label"] == "copy" and len(doc["extra_explanations"]) == 3


def test_pair_text_is_escaped_in_exports():
    s = load_session(PAIR_SESSION)
    s.extra_pair.label = "<script>alert(1)</script>|x"
    s.pair_explanations[0].text = "</td><img src=x onerror=alert(1)> | pipe \x1b[31m"
    page = to_html(s)
    assert "<script>alert(1)" not in page and "<img src=x" not in page and "\x1b" not in page
    md = to_markdown(s)
    section = md[md.index("## Extra pair"):]
    assert "\\|" in section and "\x1b" not in section


def test_each_branch_keeps_its_own_extra_pair_explanations_and_the_save_keeps_the_roots():
    """The UI's copy follows the engine's: a branch shows the extra pair's explanations made on
    it, never the root's (after an edit the later tokens keep their ids, not their
    activations); switching back brings the root's back; a save on the branch keeps the root's."""
    from nla_tui.core.branch_jobs import BranchShown
    from nla_tui.core.pair_jobs import PairExplainDone, PairReady
    from nla_tui.ui.saving import SessionKeeper
    from nla_tui.ui.state import UiState

    pair = load_session(PAIR_SESSION).extra_pair
    session = load_session(DATA / "branch_session")
    tree = session.branch_tree()
    st = UiState(info=session.info)
    st.apply(PairReady(pair))
    st.apply(ev.ConversationUpdated(list(session.messages), list(session.tokens), session.activations))
    root_exp = session.explanations[0]
    st.apply(PairExplainDone(EXTRA, root_exp.index, [root_exp]))

    def show(branch_id):
        snap = tree.snapshot()
        snap.current = branch_id
        b = snap.shown
        st.apply(ev.ConversationUpdated(list(b.messages), list(b.tokens), b.activations))
        st.apply(BranchShown(b, snap, snap.diff(branch_id), False))

    show(1)
    assert st.pair_explanations == {}
    branch_exp = session.branches[0].explanations[69][0]
    st.apply(PairExplainDone(EXTRA, 69, [branch_exp]))
    keeper = SessionKeeper(st)
    keeper.tokens, keeper.messages = st.tokens, st.messages
    saved = keeper.snapshot()
    assert saved.extra_pair is pair and saved.pair_explanations == [root_exp]
    show(0)
    assert st.pair_explanations == {root_exp.index: [root_exp]}
    show(1)
    assert st.pair_explanations == {69: [branch_exp]}
