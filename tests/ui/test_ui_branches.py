"""Branches in the TUI (issue 26 item 1), over a replay of the real recorded branch session
(tests/data/branch_session: the agent transcript, its tool result edited to a sunny
forecast as branch 1): B lists and switches, the strip marks the edited tokens, P sets the
parent's side beside the branch's, a read-only session refuses E with the usual message,
and the keys are where help finds them. The edit itself runs on the real demo engine in
tests/integration/test_ui_branches_engine.py."""

from textual.widgets import OptionList

from nla_tui.core.branch_jobs import SwitchBranch
from nla_tui.ui.screens.branches import BranchesScreen, EditMessageDialog
from tests._support_ui import BRANCHES, Holder, async_test, replay_app, settle_replay, wait_until

EDITED = {69, 77}  # the tokens the sunny forecast changed (diff against branch 0)
ANSWER = 86  # the assistant's answer after the tool result: explained on both branches


async def _show_branch(pilot, app, branch: int) -> None:
    await pilot.press("B")
    await wait_until(pilot, lambda: isinstance(app.screen, BranchesScreen), "the branch list")
    listing = app.screen.query_one(OptionList)
    listing.highlighted = [b.id for b in app.screen.order].index(branch)
    await pilot.press("enter")
    await wait_until(pilot, lambda: not app.screen.is_modal and app.state.current_branch == branch
                     and app.state.queue_depth == 0, f"branch {branch} shown")


@async_test
async def test_the_branch_list_switches_and_the_strip_marks_the_edit():
    holder = Holder()
    app = replay_app(preload=True, session=BRANCHES, holder=holder)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle_replay(pilot, app)
        app.strip.focus()
        await wait_until(pilot, lambda: app.state.branches is not None, "the branch tree")
        assert app.state.current_branch == 0 and app.strip.changed == frozenset()

        await pilot.press("B")
        await wait_until(pilot, lambda: isinstance(app.screen, BranchesScreen), "the branch list")
        rows = [str(app.screen.query_one(OptionList).get_option_at_index(k).prompt) for k in range(2)]
        assert "as captured" in rows[0] and "◂ shown" in rows[0]
        assert "sunny forecast" in rows[1] and "from 0 · message 3 (tool result)" in rows[1]
        await pilot.press("escape")
        await wait_until(pilot, lambda: not app.screen.is_modal, "the list to close")

        await _show_branch(pilot, app, 1)
        assert any(isinstance(j, SwitchBranch) and j.branch == 1 for j in holder.worker.jobs_seen)
        assert app.strip.changed == EDITED and app.state.changed == EDITED
        assert '"sunny"' in app.state.messages[3].content or "sunny" in app.state.messages[3].content
        assert "branch 1 of 2" in str(app.query_one("#status").render())
        assert "sunny forecast" in app.chat.note
        # The branch's own explanations, not the root's: 69 is explained on the branch only.
        assert app.state.best(69) is not None and 69 not in app.state.branches.root.explanations

        app.strip.set_cursor(69)
        await pilot.pause()
        assert "changed by the edit" in app.pane.text.plain

        await _show_branch(pilot, app, 0)
        assert app.strip.changed == frozenset() and app.chat.note == ""
        assert "rain" in app.state.messages[3].content


@async_test
async def test_p_sets_the_parents_token_score_and_explanation_beside_the_branchs():
    app = replay_app(preload=True, session=BRANCHES)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle_replay(pilot, app)
        app.strip.focus()
        await pilot.press("P")  # on the root: nothing to compare, said so
        await pilot.pause()
        assert not app.state.compare_parent
        await _show_branch(pilot, app, 1)
        app.strip.set_cursor(ANSWER)
        await pilot.pause()
        plain = app.pane.text.plain
        assert "⑂ branch 1" in plain and f"parent 0 #{ANSWER}" in plain and "(P: beside it)" in plain
        await pilot.press("P")
        await pilot.pause()
        mine = app.state.best(ANSWER)
        theirs = app.state.branches.branches[0].best(ANSWER)
        plain = app.pane.text.plain
        assert mine is not None and theirs is not None and mine.text != theirs.text
        assert f"{mine.score.fve_nrm:.3f}" in plain and f"{theirs.score.fve_nrm:.3f}" in plain
        assert mine.text.strip()[:30] in plain and theirs.text.strip()[:30] in plain
        await pilot.press("P")
        await pilot.pause()
        assert "parent 0:" not in app.pane.text.plain


@async_test
async def test_a_read_only_session_refuses_e_with_the_usual_message():
    app = replay_app(preload=True, session=BRANCHES)
    app.state.read_only = True  # as nla-tui open sets it
    notices = []
    app.notify = lambda message, **kw: notices.append(message)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle_replay(pilot, app)
        app.strip.focus()
        app.strip.set_cursor(70)
        await pilot.press("E")
        await pilot.pause()
        assert not isinstance(app.screen, EditMessageDialog)
        assert any("Read-only session: editing a message" in n and "Press L" in n for n in notices)


@async_test
async def test_e_opens_the_message_under_the_cursor_and_checks_the_edit_before_any_job():
    holder = Holder()
    app = replay_app(preload=False, session=BRANCHES, holder=holder)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.state.info is not None, "models ready")
        from nla_tui.core import events as ev

        app.submit(ev.SetConversation(list(holder.worker.session.messages)))
        await wait_until(pilot, lambda: app.state.tokens and app.state.queue_depth == 0, "the conversation")
        app.strip.focus()
        app.strip.set_cursor(70)  # inside the tool result (message 3)
        await pilot.press("E")
        await wait_until(pilot, lambda: isinstance(app.screen, EditMessageDialog), "the edit dialog")
        dialog = app.screen
        from textual.widgets import Label, TextArea

        area = dialog.query_one(TextArea)
        assert dialog.message == 3 and dialog.role == "tool result" and '"rain"' in area.text
        await pilot.press("ctrl+s")  # unchanged: refused in the dialog, no job
        await pilot.pause()
        assert app.screen is dialog and "same as its current text" in str(
            dialog.query_one("#dialog-error", Label).render())
        area.load_text('{"city": "Paris", "forecast": "snow"}')
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: not app.screen.is_modal, "the dialog to close")
        from nla_tui.core.branch_jobs import EditMessage

        [job] = [j for j in holder.worker.jobs_seen if isinstance(j, EditMessage)]
        # No tree known yet: the worker's shown conversation is the parent.
        assert (job.message, job.text, job.parent) == (3, '{"city": "Paris", "forecast": "snow"}', None)


def test_branch_keys_are_in_help():
    from nla_tui.ui.keys import help_rows

    rows = dict(help_rows())["Branches"]
    assert [k for k, _ in rows] == ["E", "B", "P"]
