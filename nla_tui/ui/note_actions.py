"""Notes on tokens (issue 26 item 4): n writes one on the token under the cursor (or a
span from it), N lists them; the pane shows the notes under the cursor, the strip
underlines noted tokens and `/` finds note text (finding.search). A controller of NlaApp
(ui/host.py); the notes are core/notes.py data kept in UiState.notes.

Saving: a live session saves notes with everything else (SessionKeeper.snapshot). A
session shown read-only (nla-tui open, no models) is not re-written from the UI's copy;
the note alone is added to the file on disk (Autosaver.amend_saved).
"""

from __future__ import annotations

from ..core.errors import NlaError
from ..core.notes import Note, new_note
from ..core.store.session import Session
from .host import AppHost
from .saving import SessionKeeper
from .screens.notes import NoteDialog, NotesScreen


class Notes:
    def __init__(self, host: AppHost, keeper: SessionKeeper, autosave: bool) -> None:
        self.host, self.keeper, self.autosave = host, keeper, autosave

    def write_dialog(self) -> None:
        host = self.host
        index = host.cursor_index()
        if index is None:
            return
        tokens = host.state.tokens

        def done(result: tuple[int, str] | None) -> None:
            if result is None:
                return
            end, text = result
            try:
                note = new_note(len(tokens), index, text, end, host.state.note_branch)
            except NlaError as e:  # the dialog checked the same; the conversation may have changed since
                host.notify(str(e), title="Note not kept", severity="error", timeout=8)
                return
            self._change(add=note)
            host.notify(f"Note kept on {note.span_label()} (N lists the notes, / finds them).", timeout=3)

        host.push_screen(NoteDialog(index, tokens[index].text, len(tokens)), done)

    def panel(self) -> None:
        host = self.host
        mine = [n for n in host.state.notes if n.branch == host.state.note_branch]
        if not mine:
            host.notify("No notes yet: n on a token writes one.", timeout=3)
            return
        screen = NotesScreen(mine, [t.text for t in host.state.tokens])

        def done(note: Note | None) -> None:
            for gone in screen.deleted:
                self._change(remove=gone)
            if note is not None and 0 <= note.start < len(host.state.tokens):
                host.strip.set_cursor(note.start)

        host.push_screen(screen, done)

    def shown(self) -> None:
        """The notes or the tokens changed: underline, pane and search follow."""
        host = self.host
        host.strip.set_noted(host.state.noted_indices())
        host.pane.show(host.strip.cursor)

    def _change(self, add: Note | None = None, remove: Note | None = None) -> None:
        notes = self.host.state.notes
        if add is not None:
            notes.append(add)
        if remove is not None and remove in notes:
            notes.remove(remove)
        self.shown()
        self.host.find_changed()
        if self.keeper.read_only:
            if self.keeper.directory is not None:
                self._amend_on_disk(add, remove)
            return
        self.keeper.changed_here()
        if self.autosave:
            self.keeper.request_save()

    def _amend_on_disk(self, add: Note | None, remove: Note | None) -> None:
        def amend(session: Session) -> None:
            if add is not None:
                session.notes.append(add)
            if remove is not None and remove in session.notes:
                session.notes.remove(remove)

        if self.keeper.saver.amend_saved(amend) is None:
            self.host.notify(f"{self.keeper.saver.last_error} The note is still shown here.",
                             title="Note not saved", severity="error", timeout=10)
