"""Branches in the TUI over the REAL demo engine (Gemma 3 270M on CPU), issue 26 item 1:
E on an agent transcript's tool result → a dialog → the EditMessage job → branch 1 shown
with the edited tokens marked in the strip; e explains on the branch, P with e explains the
parent's side too; B switches back; the session saves the tree and reopens with it (the
engine gets the branches back and shows branch 1 again with its explanation).

No timing assertions: waits have generous hang guards only."""

from __future__ import annotations

import pytest
from textual.widgets import Input, OptionList, TextArea

from nla_tui.core.store.session import load_session
from nla_tui.core.store.transcript import load_transcript
from nla_tui.ui.options import UiOptions
from nla_tui.ui.screens.branches import BranchesScreen, EditMessageDialog
from tests._support_paths import DATA
from tests._support_ui import async_test, data_dir, wait_until  # noqa: F401

pytestmark = pytest.mark.slow
HANG_GUARD = 900.0  # seconds; a hang guard on a loaded 2-core box, not a speed check
SUNNY = '{"city": "Paris", "forecast": "sunny", "chance": 0.0}'


async def _show(pilot, app, branch: int) -> None:
    await pilot.press("B")
    await wait_until(pilot, lambda: isinstance(app.screen, BranchesScreen), "the branch list")
    app.screen.query_one(OptionList).highlighted = [b.id for b in app.screen.order].index(branch)
    await pilot.press("enter")
    await wait_until(pilot, lambda: app.state.current_branch == branch and app.state.queue_depth == 0
                     and not app.screen.is_modal, f"branch {branch} shown", HANG_GUARD)


@async_test
async def test_edit_a_tool_result_then_switch_back_then_save_and_reopen_keep_the_tree(demo_engine, data_dir):
    from nla_tui.core import events as ev
    from nla_tui.core.runtime.worker import EngineWorker
    from nla_tui.ui.app import create_app

    engine = demo_engine
    app = create_app(lambda emit: EngineWorker(engine, emit), UiOptions(autosave=True))
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.state.info is not None and app.state.queue_depth == 0,
                         "models ready", HANG_GUARD)
        app.submit(ev.SetConversation(load_transcript(DATA / "agent_transcript.json")))
        tool = next(i for i, m in enumerate(load_transcript(DATA / "agent_transcript.json")) if m.role == "tool")
        await wait_until(pilot, lambda: any(t.turn == tool for t in app.state.tokens)
                         and app.state.queue_depth == 0, "the transcript", HANG_GUARD)
        root_tokens = list(app.state.tokens)
        app.strip.focus()
        app.strip.set_cursor(next(t.index for t in root_tokens if t.turn == tool and t.role == "tool_result"))

        # E: the tool result in an editor; ctrl+s runs the edit as branch 1.
        await pilot.press("E")
        await wait_until(pilot, lambda: isinstance(app.screen, EditMessageDialog), "the edit dialog")
        dialog = app.screen
        assert dialog.message == tool and '"rain"' in dialog.query_one(TextArea).text
        dialog.query_one(TextArea).load_text(SUNNY)
        dialog.query_one("#edit-label", Input).value = "sunny"
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: app.state.current_branch == 1 and app.state.queue_depth == 0,
                         "the edited branch", HANG_GUARD)

        # Shown: the branch's conversation, the edited tokens marked (the engine's diff).
        diff = engine.branch_diff()
        assert app.state.messages[tool].content == SUNNY and engine.messages[tool].content == SUNNY
        assert app.strip.changed == frozenset(diff.changed) != frozenset()
        assert all(a.token_id == b.token_id for a, b in zip(root_tokens[:diff.first_changed], app.state.tokens))
        changed = diff.changed[0]
        assert app.strip.cursor == changed and "changed by the edit" in app.pane.text.plain
        assert app.strip._style(changed + 1 if changed + 1 in diff.changed else changed).bold
        assert "branch 1 of 2" in str(app.query_one("#status").render())

        # e on the branch explains the branch's token; P then e explains the parent's side too.
        answer = next(i for i in range(diff.changed[-1] + 1, len(app.state.tokens))
                      if app.state.tokens[i].role == "model" and i in diff.aligned)
        app.strip.set_cursor(answer)
        await pilot.press("P", "e")
        parent_index = diff.aligned[answer]
        await wait_until(pilot, lambda: app.state.best(answer) is not None
                         and app.state.branches.branches[0].best(parent_index) is not None
                         and app.state.queue_depth == 0, "both sides explained", HANG_GUARD)
        plain = app.pane.text.plain
        mine, theirs = app.state.best(answer), app.state.branches.branches[0].best(parent_index)
        assert f"{mine.score.fve_nrm:.3f}" in plain and f"{theirs.score.fve_nrm:.3f}" in plain
        assert engine.branch_tree().branches[1].explanations[answer][0].text == mine.text

        # B: back to the conversation as captured; its marks go.
        await _show(pilot, app, 0)
        assert app.strip.changed == frozenset() and app.state.messages[tool].content != SUNNY
        assert app.state.best(parent_index).text == theirs.text  # explained from the branch, kept in the root

        # Saved with the tree (autosave after each job; ctrl+s-like save_now to be sure).
        path = app.keeper.save_now()
        saved = load_session(path)
        [branch] = saved.branches
        assert (branch.id, branch.parent, branch.edited, branch.label) == (1, 0, tool, "sunny")
        assert saved.messages[tool].content != SUNNY and branch.messages[tool].content == SUNNY
        assert saved.current_branch == 0 and branch.explanations[answer][0].text == mine.text
        assert any(e.index == parent_index and e.text == theirs.text for e in saved.explanations)

        # Reopen (ctrl+o's path): the engine gets the branches back; branch 1 shows again.
        app.sessions.open_saved_session(path)
        await wait_until(pilot, lambda: app.state.branches is not None and len(app.state.branches.branches) == 2
                         and app.state.queue_depth == 0 and engine.branch_tree().branches.keys() == {0, 1},
                         "the reopened tree", HANG_GUARD)
        await _show(pilot, app, 1)
        assert app.state.messages[tool].content == SUNNY and app.strip.changed == frozenset(diff.changed)
        assert app.state.best(answer).text == mine.text


@async_test
async def test_open_read_only_on_a_branch_then_L_gives_the_engine_the_tree(demo_engine, data_dir, tmp_path):
    """nla-tui open on the recorded branch session, B to branch 1, then L: the engine
    captures the root, adopts the saved branches and shows branch 1 again (re-captured from
    the root's activations), with its recorded explanations; a new explanation there is
    saved into that branch of the opened session; the root keeps its own."""
    import shutil

    from nla_tui.cli.open import open_options, replay_worker
    from nla_tui.core.runtime.worker import EngineWorker
    from nla_tui.ui.app import create_app

    engine = demo_engine
    path = shutil.copytree(DATA / "branch_session", tmp_path / "s")
    recorded = load_session(path)
    options = open_options(path, autosave=True)
    app = create_app(replay_worker(options), options, engine_worker=lambda opts, emit: EngineWorker(engine, emit))
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.state.branches is not None and app.state.queue_depth == 0, "the session")
        app.strip.focus()
        await _show(pilot, app, 1)
        await pilot.press("L")
        await wait_until(pilot, lambda: app.state.info is not None and app.state.queue_depth == 0
                         and app.state.current_branch == 1 and engine.branch_tree().current == 1,
                         "the models, the root captured, branch 1 adopted and shown", HANG_GUARD)
        branch = recorded.branches[0]
        assert [t.token_id for t in engine.tokens] == [t.token_id for t in branch.tokens]
        assert app.strip.changed == frozenset({69, 77}) and app.state.best(69).text == branch.best(69).text
        index = next(i for i in range(70, len(branch.tokens)) if i not in branch.explanations)
        app.strip.set_cursor(index)
        await pilot.press("e")
        await wait_until(pilot, lambda: app.state.best(index) is not None and app.state.queue_depth == 0
                         and not app.keeper.dirty, "the new explanation, autosaved", HANG_GUARD)
        await _show(pilot, app, 0)
        assert {i for i in app.state.explanations} == {e.index for e in recorded.explanations}
    saved = load_session(path)
    assert index in saved.branches[0].explanations and index not in {e.index for e in saved.explanations}
