"""The TUI attached to a server (`nla-tui --server URL`): the same app, its worker a
RemoteWorker speaking HTTP to a real uvicorn over the session's demo engine. A Pilot
chats and explains; edits a message into a branch, explains both sides, switches back,
saves and reopens the tree; two workers on one server each keep their own conversation."""

from __future__ import annotations

import threading
import time
from nla_tui.ui.options import UiOptions

import pytest

from nla_tui.core import events as ev
from nla_tui.core.types import NOISY_PREFIX, Message, Sampling
from nla_tui.ui.app import create_app
from tests._support_paths import DATA
from tests._support_server import TOKEN, serving

from tests._support_ui import async_test, type_message, wait_until

pytestmark = pytest.mark.slow
HANG_GUARD = 900.0  # a hang guard on a loaded 2-core box, not a speed check


@pytest.fixture(scope="module")
def served(demo_engine):
    with serving(demo_engine, mcp=False) as (url, nla):
        yield url, nla


@async_test
async def test_the_tui_chats_and_explains_through_a_server(served, tmp_path, monkeypatch):
    from nla_tui.client.worker import RemoteWorker

    url, nla = served
    monkeypatch.setenv("NLA_TUI_DATA", str(tmp_path))
    holder = {}

    def factory(emit):
        holder["worker"] = RemoteWorker(url, TOKEN, emit)
        return holder["worker"]

    app = create_app(factory, UiOptions(max_new_tokens=12))
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.state.info is not None and app.state.queue_depth == 0,
                         "the server's models", HANG_GUARD)
        assert app.state.info.d_model == nla.info.d_model and app.state.info.pair_label
        await type_message(pilot, "The Eiffel Tower is in")
        await wait_until(pilot, lambda: app.state.reply is None and len(app.state.messages) == 2,
                         "the reply", HANG_GUARD)
        conversation = holder["worker"].conversation
        assert app.state.messages == conversation.messages and app.chat.reply_text == conversation.messages[-1].content
        assert [t.token_id for t in app.state.tokens] == [t.token_id for t in conversation.tokens]
        assert app.strip.shown_indices == list(range(len(conversation.tokens)))
        await pilot.press("home", *["right"] * (NOISY_PREFIX + 1))
        index = app.strip.cursor
        await pilot.press("e")
        await wait_until(pilot, lambda: app.state.best(index) is not None, "the explanation", HANG_GUARD)
        best = app.state.best(index)
        # The pane shows the server's score (its label may say "unreliable" on a special token).
        assert best.score is not None and f"cos {best.score.cos:.3f}" in str(app.pane.render())
        # the server explained exactly this token of this conversation
        want = nla.explain(conversation.handle, [index], best.sampling)[0]
        assert best.text == want.text
        # the logit lens and the per-sentence scores came over HTTP too (POST /v1/lens, /v1/sentences)
        lens = nla.logit_lens(conversation.handle, index)
        assert [[c.token_id for c in top] for top in app.state.lens[index]] == [[c.token_id for c in top] for top in lens]
        sentences = nla.sentence_scores(best.text, nla.activations(conversation.handle, [index])[0])
        assert (best.sentences is None) == (sentences is None)
        if sentences is not None:
            assert [x.text for x in best.sentences] == [x.text for x in sentences]
            assert [x.alone for x in best.sentences] == pytest.approx([x.alone for x in sentences], abs=1e-5)
        pane = str(app.pane.render())
        assert "logit lens" in pane


@async_test
async def test_the_tui_edits_a_message_into_a_branch_through_a_server(served, tmp_path, monkeypatch):
    """E on the agent transcript's tool result over the server (POST /v1/edit): branch 1
    shown with the server's diff marked; P then e explains both sides; B switches back;
    the saved session reopens with its tree (AdoptBranches, the branch captured again)."""
    from textual.widgets import Input, OptionList, TextArea

    from nla_tui.client.worker import RemoteWorker
    from nla_tui.core.store.session import load_session
    from nla_tui.core.store.transcript import load_transcript
    from nla_tui.ui.screens.branches import BranchesScreen, EditMessageDialog

    url, nla = served
    monkeypatch.setenv("NLA_TUI_DATA", str(tmp_path))
    sunny = '{"city": "Paris", "forecast": "sunny", "chance": 0.0}'
    transcript = load_transcript(DATA / "agent_transcript.json")
    tool = next(i for i, m in enumerate(transcript) if m.role == "tool")
    holder, failures = {}, []

    def factory(emit):
        def seen(event):  # a failed job ends the waits below at once, with its message
            if isinstance(event, ev.JobFailed):
                failures.append(event)
            emit(event)
        holder["worker"] = RemoteWorker(url, TOKEN, seen)
        return holder["worker"]

    async def show(branch: int) -> None:
        await pilot.press("B")
        await wait_until(pilot, lambda: bool(failures) or isinstance(app.screen, BranchesScreen), "the branch list")
        app.screen.query_one(OptionList).highlighted = [b.id for b in app.screen.order].index(branch)
        await pilot.press("enter")
        await wait_until(pilot, lambda: bool(failures) or app.state.current_branch == branch
                         and app.state.queue_depth == 0 and not app.screen.is_modal, f"branch {branch} shown", HANG_GUARD)
        assert not failures, failures

    app = create_app(factory, UiOptions(max_new_tokens=12, autosave=True))
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: bool(failures) or app.state.info is not None and app.state.queue_depth == 0,
                         "the server's models", HANG_GUARD)
        assert not failures, failures
        app.submit(ev.SetConversation(transcript))
        await wait_until(pilot, lambda: bool(failures) or any(t.turn == tool for t in app.state.tokens)
                         and app.state.queue_depth == 0, "the transcript", HANG_GUARD)
        assert not failures, failures
        root = holder["worker"].conversation
        app.strip.focus()
        app.strip.set_cursor(next(t.index for t in app.state.tokens if t.turn == tool and t.role == "tool_result"))

        await pilot.press("E")
        await wait_until(pilot, lambda: bool(failures) or isinstance(app.screen, EditMessageDialog), "the edit dialog")
        app.screen.query_one(TextArea).load_text(sunny)
        app.screen.query_one("#edit-label", Input).value = "sunny"
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: bool(failures) or app.state.current_branch == 1 and app.state.queue_depth == 0,
                         "the edited branch", HANG_GUARD)
        assert not failures, failures

        # Shown: the server's edited conversation, the tokens its diff says changed marked.
        branch = holder["worker"].conversation
        assert branch.handle != root.handle and branch.messages[tool].content == sunny
        diff = nla.diff(root.handle, branch.handle)
        assert app.state.messages[tool].content == sunny
        assert [t.token_id for t in app.state.tokens] == [t.token_id for t in branch.tokens]
        assert app.strip.changed == frozenset(diff.changed) != frozenset()
        assert "branch 1 of 2" in str(app.query_one("#status").render())
        assert "changed by the edit" in app.pane.text.plain
        shown = app.state.branches.diff(1)  # the cos of aligned tokens, from the activations fetched
        assert shown.cos.keys() == diff.cos.keys()
        assert all(abs(shown.cos[k] - diff.cos[k]) < 1e-5 for k in diff.cos)

        # e on the branch, P then e: the parent's side explained on the server too.
        answer = next(i for i in range(diff.changed[-1] + 1, len(app.state.tokens))
                      if app.state.tokens[i].role == "model" and i in diff.aligned)
        parent_index = diff.aligned[answer]
        app.strip.set_cursor(answer)
        await pilot.press("P", "e")
        await wait_until(pilot, lambda: bool(failures) or app.state.best(answer) is not None
                         and app.state.branches.branches[0].best(parent_index) is not None
                         and app.state.queue_depth == 0, "both sides explained", HANG_GUARD)
        assert not failures, failures
        mine, theirs = app.state.best(answer), app.state.branches.branches[0].best(parent_index)
        assert mine.text == nla.explain(branch.handle, [answer], mine.sampling)[0].text
        assert theirs.text == nla.explain(root.handle, [parent_index], theirs.sampling)[0].text

        # B: back to the conversation as captured; its marks go.
        await show(0)
        assert app.strip.changed == frozenset() and app.state.messages[tool].content != sunny
        assert holder["worker"].conversation.handle == root.handle
        assert app.state.best(parent_index).text == theirs.text

        # Saved with the tree, reopened: the worker adopts the branches; branch 1 shows again.
        path = app.keeper.save_now()
        assert [b.id for b in load_session(path).branches] == [1]
        app.sessions.open_saved_session(path)
        await wait_until(pilot, lambda: bool(failures) or app.state.branches is not None
                         and len(app.state.branches.branches) == 2 and app.state.queue_depth == 0 and holder["worker"].tree.branches.keys() == {0, 1},
                         "the reopened tree", HANG_GUARD)
        assert not failures, failures
        await show(1)
        assert app.state.messages[tool].content == sunny and app.strip.changed == frozenset(diff.changed)
        assert app.state.best(answer).text == mine.text


def test_two_attached_workers_keep_their_own_conversations(served):
    from nla_tui.client.worker import RemoteWorker

    url, _ = served
    texts = {"a": "The capital of France is Paris.", "b": "Bananas are yellow and sweet fruit."}
    events: dict[str, list] = {k: [] for k in texts}
    workers = {k: RemoteWorker(url, TOKEN, events[k].append).start() for k in texts}
    try:
        for k, w in workers.items():
            w.submit(ev.SetConversation([Message("user", texts[k])]))
        for w in workers.values():
            assert w.wait_idle(HANG_GUARD)
        # both explain at once, each its own conversation's token 8
        for w in workers.values():
            w.submit(ev.Explain(8, Sampling(max_new_tokens=12)))
        threads = [threading.Thread(target=w.wait_idle, args=(HANG_GUARD,)) for w in workers.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for w in workers.values():
            w.stop()
    for k in texts:
        failed = [e for e in events[k] if isinstance(e, ev.JobFailed)]
        assert not failed, failed
        updated = next(e for e in events[k] if isinstance(e, ev.ConversationUpdated))
        assert updated.messages[0].content == texts[k]
        assert updated.activations.shape == (len(updated.tokens), workers[k].client.info.d_model)
        done = next(e for e in events[k] if isinstance(e, ev.ExplainDone))
        assert done.index == 8 and done.explanations[0].text
    assert workers["a"].conversation.handle != workers["b"].conversation.handle
    token_a = next(e for e in events["a"] if isinstance(e, ev.ConversationUpdated)).tokens[8].text
    token_b = next(e for e in events["b"] if isinstance(e, ev.ConversationUpdated)).tokens[8].text
    assert token_a != token_b  # (so the two explanations were of different activations)


def test_esc_cancels_a_request_still_queued_on_the_server(served, demo_engine):
    """Esc while the server is busy with another client's job: the attached worker is free
    at once, and the server drops the queued request by its id (its AV never runs)."""
    from nla_tui.client.worker import RemoteWorker

    url, nla = served
    events: list = []
    worker = RemoteWorker(url, TOKEN, events.append).start()
    started, gate = threading.Event(), threading.Event()
    try:
        worker.submit(ev.SetConversation([Message("user", "The capital of France is Paris.")]))
        assert worker.wait_idle(HANG_GUARD)
        nla.submit(lambda engine, cancel: started.set() or gate.wait(HANG_GUARD), ev.JobKind.EXPLAIN,
                   ev.PRIORITY_CHAT)  # another client's long job holds the server's worker
        assert started.wait(HANG_GUARD)
        passes = demo_engine.counters["av_generate"]
        worker.submit(ev.Explain(8, Sampling(max_new_tokens=12)))
        deadline = time.monotonic() + HANG_GUARD
        while nla.status()["queue_depth"] < 2:
            assert time.monotonic() < deadline, "the explain never reached the server"
            time.sleep(0.05)
        worker.cancel_current()
        assert worker.wait_idle(120)  # free while the server is still busy
        ended = [e for e in events if isinstance(e, ev.JobFinished) and e.kind == ev.JobKind.EXPLAIN]
        assert ended and ended[-1].cancelled
        assert nla.status()["queue_depth"] == 1  # only the other client's job is left
    finally:
        gate.set()
        worker.stop()
    deadline = time.monotonic() + HANG_GUARD
    while nla.status()["queue_depth"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert demo_engine.counters["av_generate"] == passes  # the cancelled explain never ran


def test_jobs_the_server_has_no_route_for_fail_with_one_line_saying_where_they_run(served):
    from nla_tui.client.worker import RemoteWorker
    from nla_tui.core.pair_jobs import EXTRA, ExplainWithPair

    url, _ = served
    events: list = []
    worker = RemoteWorker(url, TOKEN, events.append).start()
    try:
        worker.submit(ev.CheckFidelity())
        assert worker.wait_idle(HANG_GUARD)
        worker.submit(ExplainWithPair(0, EXTRA))
        assert worker.wait_idle(HANG_GUARD)
    finally:
        worker.stop()
    failed = {e.kind: e.message for e in events if isinstance(e, ev.JobFailed)}
    assert "nla-tui check --fidelity" in failed[ev.JobKind.CHECK_FIDELITY]
    assert "without --server" in failed[ev.JobKind.EXPLAIN_PAIR]
    assert all("\n" not in m and "cannot run" not in m for m in failed.values())


def test_branches_the_server_dropped_are_captured_again_and_a_bad_edit_is_refused_first(served):
    """Both handles forgotten on the server (as after a restart or its memory budget): an
    explain on the shown root and one on the branch not shown capture them again from their
    messages (the same tokens); an unchanged edit is refused before any request."""
    from nla_tui.client.worker import RemoteWorker
    from nla_tui.core.branch_jobs import BranchExplainDone, BranchShown, EditMessage, ExplainOnBranch, SwitchBranch

    url, nla = served
    events: list = []
    worker = RemoteWorker(url, TOKEN, events.append).start()
    text = "The capital of France is Paris."
    try:
        worker.submit(ev.SetConversation([Message("user", text)]))
        assert worker.wait_idle(HANG_GUARD)
        worker.submit(EditMessage(0, text))  # the same text: refused here
        worker.submit(EditMessage(0, "The capital of Italy is Rome."))
        assert worker.wait_idle(HANG_GUARD)
        root, branch = worker.handles[0], worker.handles[1]
        nla.forget(root.handle)
        nla.forget(branch.handle)
        worker.submit(SwitchBranch(0))  # held here: no request
        worker.submit(ev.Explain(8, Sampling(max_new_tokens=12)))
        assert worker.wait_idle(HANG_GUARD)
        worker.submit(ExplainOnBranch(1, 8, Sampling(max_new_tokens=12)))
        assert worker.wait_idle(HANG_GUARD)
    finally:
        worker.stop()
    failed = [e for e in events if isinstance(e, ev.JobFailed)]
    assert len(failed) == 1 and "same as its current text" in failed[0].message, failed
    shown = [e for e in events if isinstance(e, BranchShown)]
    assert [(e.branch.id, e.created) for e in shown] == [(1, True), (0, False)]
    assert shown[0].diff.changed and shown[1].diff is None
    for again, before in ((worker.handles[0], root), (worker.handles[1], branch)):  # held on the server again
        assert nla.held(again.handle) and [t.token_id for t in again.tokens] == [t.token_id for t in before.tokens]
    assert any(isinstance(e, ev.ExplainDone) and e.index == 8 for e in events)
    [done] = [e for e in events if isinstance(e, BranchExplainDone)]
    assert done.branch == 1 and done.index == 8
    assert done.explanations[0].text == nla.explain(worker.handles[1].handle, [8], done.explanations[0].sampling)[0].text
