"""Notes on tokens in the TUI (issue 26 item 4): n writes one on the cursor's token or a
span from it, the pane and the strip show it, / finds its text, N lists, jumps and
deletes, and it is saved: with the session (a live one) or added to the file on disk (a
session opened read-only). Over a replay of the real recorded session."""

import shutil

from textual.widgets import Input, Label, OptionList, TextArea

from nla_tui.core.store.session import load_session
from nla_tui.ui.screens.notes import NoteDialog, NotesScreen
from tests._support_ui import RECORDED, async_test, data_dir, replay_app, settle_replay, wait_until  # noqa: F401

TOKEN = 18  # ' in' of the recorded reply


async def _write_note(pilot, app, text: str, end: int | str) -> NoteDialog:
    await pilot.press("n")
    await wait_until(pilot, lambda: isinstance(app.screen, NoteDialog), "the note dialog")
    dialog = app.screen
    dialog.query_one(TextArea).load_text(text)
    dialog.query_one("#note-end", Input).value = str(end)
    await pilot.press("ctrl+s")
    await pilot.pause()
    return dialog


@async_test
async def test_a_note_is_shown_found_listed_and_deleted():
    app = replay_app(preload=True)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle_replay(pilot, app)
        app.strip.focus()
        app.strip.set_cursor(TOKEN)
        # A span that ends before it starts is refused in the dialog, which stays open.
        dialog = await _write_note(pilot, app, "the model \x1b[2J settles on Paris here", TOKEN - 1)
        assert app.screen is dialog and "before it starts" in str(dialog.query_one("#dialog-error", Label).render())
        dialog.query_one("#note-end", Input).value = str(TOKEN + 2)
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: not app.screen.is_modal, "the dialog to close")
        [note] = app.state.notes
        assert (note.start, note.end, note.branch) == (TOKEN, TOKEN + 2, None)
        assert app.strip.noted == {TOKEN, TOKEN + 1, TOKEN + 2}
        pane = app.pane.text.plain
        assert f"tokens {TOKEN}–{TOKEN + 2}" in pane and "settles on Paris" in pane and "\x1b" not in pane
        assert app.keeper.snapshot().notes == [note]  # saved with the session, exported with it

        # / finds the note's text and marks its tokens; ] lands on them.
        app.strip.set_cursor(0)
        await pilot.press("slash", *"settles", "enter")
        await wait_until(pilot, lambda: app.finder.matches and not app.screen.is_modal, "the search")
        assert (TOKEN, TOKEN + 2) in app.finder.matches and app.strip.cursor == TOKEN

        # N lists it; Enter jumps to its first token; d deletes it.
        app.strip.set_cursor(0)
        await pilot.press("N")
        await wait_until(pilot, lambda: isinstance(app.screen, NotesScreen), "the notes panel")
        assert "settles on Paris" in str(app.screen.query_one(OptionList).get_option_at_index(0).prompt)
        await pilot.press("enter")
        await wait_until(pilot, lambda: not app.screen.is_modal, "the panel to close")
        assert app.strip.cursor == TOKEN
        await pilot.press("N")
        await wait_until(pilot, lambda: isinstance(app.screen, NotesScreen), "the notes panel")
        await pilot.press("d", "escape")
        await wait_until(pilot, lambda: not app.screen.is_modal, "the panel to close")
        assert app.state.notes == [] and app.strip.noted == set() and app.keeper.snapshot().notes == []


@async_test
async def test_a_note_on_a_session_opened_read_only_is_added_to_its_file(data_dir, tmp_path):
    from nla_tui.cli.open import open_options, replay_worker
    from nla_tui.ui.app import create_app

    path = shutil.copytree(RECORDED, tmp_path / "s")
    before = load_session(path)
    options = open_options(path, autosave=True)
    app = create_app(replay_worker(options), options)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle_replay(pilot, app)
        app.strip.focus()
        app.strip.set_cursor(TOKEN)
        await _write_note(pilot, app, "read-only note", TOKEN)
        await wait_until(pilot, lambda: not app.screen.is_modal, "the dialog to close")
        after = load_session(path)
        assert [(n.start, n.text) for n in after.notes] == [(TOKEN, "read-only note")]
        # Only the note was added: what the file held is kept as it was.
        assert [e.to_json() for e in after.explanations] == [e.to_json() for e in before.explanations]
        assert [s.to_json() for s in after.steered] == [s.to_json() for s in before.steered]
        assert app.state.steered == before.steered  # carried for a later save (after L)
