"""The app's sessions (a controller of NlaApp, ui/host.py): ctrl+s save, ctrl+o / f2
browser, X export, L (load a read-only session's models), autosave after every job, on
exit and on SIGTERM / SIGHUP.

The app calls four hooks (mount, changed, unmount, commands) and binds the keys.
Writing is the SessionKeeper's (and its Autosaver's) job; this class wires keys,
dialogs and signals to it.
Autosave is off unless options.autosave is true (the CLI sets it), so tests and
scripts never write into the user's data directory by accident.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Iterable

from textual.app import SystemCommand

from ..core import events as ev
from ..core.branch_jobs import AdoptBranches
from ..core.branch_tree import ROOT
from ..core.errors import NlaError
from ..core.options import from_model_info
from ..core.store.autosave import SIGNALS
from ..core.store.export import FORMATS, export_session
from ..core.store.session import Session, load_session, slugify
from ..core.types import Explanation, group_by_index
from ..paths import data_root, sessions_dir
from .corpus_actions import Corpus
from .host import AppHost
from .saving import SessionKeeper
from .state import Change
from .screens.dialogs import ValueDialog
from .screens.sessions import SessionBrowser

READ_ONLY_MESSAGE = ("Read-only session: models are not loaded. Everything recorded is browsable; "
                     "press L to load this session's models and explain new tokens.")


def export_format(path: str) -> str | None:
    suffix = Path(path).suffix.lower().lstrip(".")
    return {"markdown": "md", "htm": "html"}.get(suffix, suffix) if suffix else None


def check_export_path(path: str) -> str | None:
    if not path.strip():
        return "Give a file name ending in .md, .html or .json."
    if export_format(path) not in FORMATS:
        return "The file name must end in .md, .html or .json (that picks the format)."
    return None


class Sessions:
    def __init__(self, host: AppHost) -> None:
        self.host = host
        self.keeper = SessionKeeper(host.state)
        self.autosave = host.options.autosave
        self.corpus = Corpus(host, self.keeper)  # C: a sweep's hits open as conversations
        # (token ids, explanations) to put back once the engine has recaptured them (L, ctrl+o).
        self._restore: tuple[list[int], list[Explanation]] | None = None
        self._signals_installed = False

    # ------------------------------------------------------------ hooks from app.py

    def mount(self) -> None:
        # A background autosave that fails says so at once (from its thread, safely).
        self.keeper.saver.on_error = lambda err: self.host.call_from_thread(self._autosave_failed, err)
        opened = self.host.options.session
        if isinstance(opened, Session):  # nla-tui open PATH
            self.keeper.adopt(opened, self.host.options.session_dir)
            self.keeper.read_only = True
            # What the replayed events do not carry; kept so a save after L keeps them too.
            self.host.state.steered = list(opened.steered)
            self.host.state.notes = list(opened.notes)
            self.host.notify(READ_ONLY_MESSAGE, title=opened.name, timeout=10)
            self._notify_load_warnings(opened)
        if self.autosave:
            self._install_signal_handlers()

    def changed(self, change: Change) -> None:
        self.corpus.changed(change)  # a corpus hit's explanation joins the session before it is saved
        restore = self._restore
        if restore and change.captured and [t.token_id for t in self.host.state.tokens] == restore[0]:
            self._restore = None
            have = self.host.state.explanations
            group_by_index([e for e in restore[1] if e not in have.get(e.index, [])], into=have)
            self.host.strip.refresh_tokens()
            self.host.pane.show(self.host.strip.cursor)
        if self.keeper.observe(change) and self.autosave and not self.keeper.read_only:
            self.keeper.request_save()

    def _autosave_failed(self, err: Exception) -> None:
        self.host.notify(f"{err} The conversation is still here; fix that, then press ctrl+s.",
                         title="Autosave failed", severity="error", timeout=12)

    def unmount(self) -> None:
        """Exit (ctrl+q, self.exit, a signal): write what was not saved yet, and wait."""
        if self.autosave and not self.keeper.read_only:
            self.keeper.save_now(only_if_dirty=True)
        if self.autosave:
            self._remove_signal_handlers()

    def commands(self) -> Iterable[SystemCommand]:
        for fmt, label in (("md", "Markdown"), ("html", "HTML heat map"), ("json", "JSON")):
            yield SystemCommand(f"Export session as {label}",
                                f"Write {fmt.upper()} to the exports folder (X asks for a path)",
                                lambda fmt=fmt: self.export_to(self.default_export_path(fmt)))

    # ------------------------------------------------------------ signals

    def _install_signal_handlers(self) -> None:
        # Through the event loop, not signal.signal: the handler then runs between two
        # UI callbacks, never in the middle of folding an event or of a save.
        try:
            loop = asyncio.get_running_loop()
            for sig in SIGNALS:
                loop.add_signal_handler(sig, self._on_signal, sig)
            self._signals_installed = True
        except (RuntimeError, NotImplementedError, ValueError):  # no loop / not main thread
            self._signals_installed = False

    def _remove_signal_handlers(self) -> None:
        if self._signals_installed:
            self._signals_installed = False
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # the loop is already gone: nothing left to remove
                return
            for sig in SIGNALS:
                loop.remove_signal_handler(sig)

    def _on_signal(self, signum: int) -> None:
        """SIGTERM, or SIGHUP from a dropped SSH connection: save first, then leave."""
        if not self.keeper.read_only:
            self.keeper.save_now(only_if_dirty=True)
        self.host.exit(return_code=128 + signum)

    # ------------------------------------------------------------ ctrl+s

    def save_dialog(self) -> None:
        if isinstance(self.host.screen, ValueDialog):  # ctrl+s inside a dialog: not a second one
            return
        if self.keeper.snapshot() is None:
            self.host.notify("Nothing to save yet: chat first (i) or open a transcript (o).",
                             severity="warning")
            return

        def done(name: str | None) -> None:
            if not name or not name.strip():
                return
            path = self.keeper.save_as(name, sessions_dir())
            self._report_save(path)

        self.host.push_screen(ValueDialog("Save session as", self.keeper.name,
                                          validate=lambda v: None if v.strip() else
                                          "A session name cannot be empty."), done)

    def _report_save(self, path: Path | None) -> None:
        if path is None:
            err = self.keeper.saver.last_error
            self.host.notify(f"{err}" if err else "Nothing to save.", title="Save failed",
                             severity="error", timeout=10)
        else:
            self.host.notify(f"Saved {self.keeper.name!r} to {path}", timeout=4)

    # ------------------------------------------------------------ browser

    def browse(self) -> None:
        if isinstance(self.host.screen, SessionBrowser):
            return

        def done(path: Path | None) -> None:
            if path is not None:
                self.open_saved_session(path)

        # Renaming or deleting the open session goes through the keeper, between two saves.
        self.host.push_screen(SessionBrowser(sessions_dir(), self.keeper.directory,
                                             rename_open=self.keeper.rename, delete_open=self.keeper.delete),
                              done)

    def open_saved_session(self, path: Path) -> None:
        """Show a saved session. A live engine recaptures its conversation (from the
        activation cache) so new tokens can be explained; a read-only app swaps its
        replay worker."""
        try:
            session = load_session(path)
        except NlaError as e:
            self.host.notify(str(e), title="Cannot open session", severity="error", timeout=10)
            return
        self.host.chat.show_note(None)  # no longer the demo's example
        self.host.forget_example()
        if self.autosave and not self.keeper.read_only:
            self.keeper.save_now(only_if_dirty=True)  # the current conversation is not lost
        st = self.host.state
        st.explanations.clear()
        st.partial.clear()
        st.steered = list(session.steered)
        st.notes = list(session.notes)
        if self.keeper.read_only or st.info is None:
            from ..core.runtime.replay import ReplayWorker

            if self.host.worker is not None:
                self.host.worker.stop()
            self.host.worker = ReplayWorker(session, self.host.emit, preload=True)
            self.host.worker.start()
            self.keeper.read_only = True
        else:
            if (session.info.subject, session.info.layer) != (st.info.subject, st.info.layer):
                self.host.notify(f"{session.name} was saved with {session.info.subject} (layer "
                                 f"{session.info.layer}); new explanations come from the loaded "
                                 "models.", severity="warning", timeout=8)
            self.host.strip.follow = False
            st.show_session(session)
            self.host.chat.set_messages(st.messages)
            self.host.strip.refresh_tokens()
            self.host.pane.show(self.host.strip.cursor)
            self.host.update_status()
            # The engine must hold the same conversation for e / a to explain it.
            self.host.submit(ev.SetConversation(list(session.messages)))
            self._restore = ([t.token_id for t in session.tokens], list(session.explanations))
            self._adopt_branches(session)
        self.keeper.adopt(session, Path(path))
        self.host.notify(f"Opened {session.name}", timeout=3)
        self._notify_load_warnings(session)

    def _adopt_branches(self, session: Session) -> None:
        """The engine gets the session's branches over the conversation it now holds, and
        shows the one shown when the session was saved (none to give: nothing sent)."""
        if session.branches:
            self.host.state.adopting = self.host.state.branches  # kept through the capture (state.py)
            self.host.submit(AdoptBranches(list(session.branches), session.current_branch,
                                           [t.token_id for t in session.tokens], list(session.explanations)))

    def _notify_load_warnings(self, session: Session) -> None:
        """What loading noticed but did not refuse (e.g. activations without a checksum)."""
        for w in session.warnings:
            self.host.notify(w, title=session.name, severity="warning", timeout=10)

    # ------------------------------------------------------------ L: load models on demand

    def load_models(self) -> None:
        """A read-only session (nla-tui open) gets its models: the replay worker is
        replaced by an EngineWorker for the session's subject/AV/AR, which recaptures
        the conversation; the recorded explanations stay (same tokens), new ones can
        be made, and autosave writes back to the session's directory. Device and
        precision are chosen for this machine (the session may come from a GPU box)."""
        if not self.keeper.read_only:
            self.host.notify("The models are already loaded.", timeout=3)
            return
        session = self.keeper.snapshot()
        info = self.host.state.info
        if session is None or info is None:
            self.host.notify("Nothing to load models for yet.", severity="warning")
            return
        if self.host.engine_worker is None:
            self.host.notify("This app cannot load models (it was started without them).",
                             severity="warning")
            return
        if self.host.worker is not None:
            self.host.worker.stop()
        self.host.state.info = None  # the status line shows loading progress until ModelsReady
        # The session's models, layer and fve variance; this run's device/placement/cache flags.
        options = from_model_info(info, self.host.options.engine)
        pair = self.host.state.pair
        if pair is not None and options.extra_pair is None:  # the session's extra pair, where it is on disk
            options = replace(options, extra_pair=pair.spec())
            if options.extra_pair is None:
                self.host.notify(f"The extra pair {pair.label!r} is not on this machine ({pair.models.av}): "
                                 "loading the main pair only.", severity="warning", timeout=8, markup=False)
        self.host.worker = self.host.engine_worker(options, self.host.emit)
        self.host.worker.start()
        st, tree = self.host.state, self.host.state.branches
        if tree is not None and tree.current != ROOT:
            # The engine starts on the root (AdoptBranches then shows the saved branch): the
            # UI follows, so a save in between pairs the root with the root's explanations.
            tree.shown.explanations = {i: list(v) for i, v in st.explanations.items()}
            tree.current = ROOT
            st.explanations = {i: list(v) for i, v in tree.root.explanations.items()}
            st.diff, st.changed = None, frozenset()
        self.host.submit(ev.SetConversation(list(session.messages)))
        # Re-applied when the engine's capture of these same tokens arrives (an engine
        # may first report another conversation, which would drop them from the UI).
        self._restore = ([t.token_id for t in session.tokens], list(session.explanations))
        self._adopt_branches(session)
        self.keeper.read_only = False
        self.host.notify(f"Loading {info.preset or info.subject} (subject, AV, AR)…", timeout=5)

    # ------------------------------------------------------------ export

    def default_export_path(self, fmt: str) -> Path:
        return data_root() / "exports" / f"{slugify(self.keeper.name)}.{fmt}"

    def export_dialog(self) -> None:
        if self.keeper.snapshot() is None:
            self.host.notify("Nothing to export yet: chat first (i) or open a session (ctrl+o).",
                             severity="warning")
            return

        def done(path: str | None) -> None:
            if path:
                self.export_to(Path(path).expanduser())

        self.host.push_screen(ValueDialog("Export to (.md, .html or .json)",
                                          str(self.default_export_path("html")),
                                          validate=check_export_path), done)

    def export_to(self, out: Path) -> Path | None:
        """Save first (the export then matches a session on disk), then write `out`."""
        session = self.keeper.snapshot()
        if session is None:
            self.host.notify("Nothing to export yet.", severity="warning")
            return None
        if not self.keeper.read_only:
            self._report_save(self.keeper.save_now())
            session = self.keeper.snapshot() or session
        try:
            written = export_session(session, export_format(str(out)) or "md", out)
        except (NlaError, OSError) as e:
            self.host.notify(str(e), title="Export failed", severity="error", timeout=10)
            return None
        self.host.notify(f"Exported to {written}", timeout=6)
        return Path(written)
