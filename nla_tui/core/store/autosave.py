"""The only writer of the session the TUI shows: one background thread, one lock.

    saver = Autosaver(root=sessions_dir)
    saver.request(session, change)   # after a finished job: written in the background
    saver.save_now(session, change)  # ctrl+s, exit, SIGTERM/SIGHUP: written before it returns
    saver.rename(name) / saver.delete() / saver.save_as(session, change, root, name)

Every write, and every move or deletion of the session's directory, happens under
one lock, so renaming or deleting the open session from the browser never races a
background save: a rename waits for the save in flight, and the next save writes the
new name into the new directory; a delete drops the save still queued, so the
deleted session does not come back. A newer `request` replaces one not yet started
(the latest state wins); a save never raises: the error is kept in `last_error` and
passed to `on_error` (from the saver thread). `change` is the caller's counter of
edits: `saved_change` says which one is on disk.

Signals are the UI's business (it installs SIGTERM/SIGHUP handlers through its event
loop, which then calls save_now); SIGNALS lists them.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import replace
from pathlib import Path
from typing import Callable

from ..errors import NlaError, SessionConflict
from .session import Session, default_sessions_root, delete_session, free_directory, load_session, \
    rename_session, save_session, slugify
from .session_guard import current_generation

SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s)


class Autosaver:
    def __init__(self, name: str, root: str | os.PathLike | None = None,
                 directory: str | os.PathLike | None = None,
                 on_error: Callable[[Exception], None] | None = None) -> None:
        self.name = name  # stamped on every write, so a rename is never undone by a queued save
        self.root = Path(root) if root is not None else None
        self.directory = Path(directory) if directory is not None else None
        self.on_error = on_error
        self.last_error: Exception | None = None
        self.last_saved: Path | None = None  # where the last successful write went
        self.saved_change = 0  # the caller's change counter of what is on disk
        # The generation of the session.json in `directory` that this saver wrote or
        # adopted; None while `directory` holds none of ours. A save refuses to replace
        # any other (another process's save would be lost): see save_session.
        self.generation: int | None = self._generation_in(self.directory)
        self._write = threading.Lock()  # held while the session's directory is written, moved or deleted
        self._cv = threading.Condition()  # guards _pending and the thread below
        self._pending: tuple[Session, int] | None = None
        self._thread: threading.Thread | None = None

    @staticmethod
    def _generation_in(directory: Path | None) -> int | None:
        try:
            return None if directory is None else current_generation(directory)
        except (NlaError, OSError):  # unreadable: the first save says so
            return None

    # ------------------------------------------------------------ writes

    def request(self, session: Session | None, change: int) -> None:
        """Save in the background. At most one saver thread runs; it writes the latest
        request when the running write ends."""
        if session is None:
            return
        with self._cv:
            self._pending = (session, change)
            if self._thread is None:
                self._thread = threading.Thread(target=self._background, name="nla-autosave", daemon=True)
                self._thread.start()

    def _background(self) -> None:
        while True:
            with self._write:
                with self._cv:
                    job, self._pending = self._pending, None
                    if job is None:  # decided under the lock: a request now starts a new thread
                        self._thread = None
                        return
                ok = self._save_locked(*job)
            if not ok and self.on_error is not None:
                try:
                    self.on_error(self.last_error)  # type: ignore[arg-type]
                except Exception:  # the app is closing: the exit save reports it
                    pass

    def save_now(self, session: Session | None, change: int) -> Path | None:
        """Write `session` before returning (it supersedes a queued request). Returns the
        directory, or None when there was nothing to save or the write failed."""
        if session is None:
            return None
        with self._write:
            with self._cv:
                if self._pending is not None and self._pending[1] <= change:
                    self._pending = None
            return self.directory if self._save_locked(session, change) else None

    def _save_locked(self, session: Session, change: int) -> bool:
        try:
            if not session.tokens:
                return False
            session = replace(session, name=self.name, generation=self.generation)
            target = self.directory or free_directory(self.root or default_sessions_root(), slugify(self.name))
            save_session(session, target, expect_new=self.generation is None)
            self.directory = self.last_saved = target
            self.generation = session.generation
            self.last_error = None
            self.saved_change = max(self.saved_change, change)
            return True
        except Exception as e:  # a failed autosave must not take the app down
            self.last_error = e
            return False

    def amend_saved(self, amend: Callable[[Session], None]) -> Path | None:
        """Apply `amend` to the session as it is on disk in `directory` and write it back,
        under the same lock as every save: how a session shown read-only (no models, so no
        full snapshot is written from the UI) still keeps a note. Whatever else the file
        holds, including another process's additions, stays as it is. Returns the
        directory, or None (the error in last_error)."""
        with self._write:
            try:
                if self.directory is None:
                    raise NlaError("This session has no folder yet; save it first (ctrl+s).")
                session = load_session(self.directory)
                amend(session)
                save_session(session, self.directory)
                self.generation = session.generation
                self.last_error = None
                return self.directory
            except Exception as e:  # the app stays up: the caller reports it
                self.last_error = e
                return None

    def wait(self) -> None:
        """Until the background saves queued so far are written."""
        with self._cv:
            t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join()

    # ------------------------------------------------------------ the session's directory

    def adopt(self, name: str, directory: Path | None, change: int, generation: int | None = None) -> None:
        """The app now shows a session opened from disk (its generation as loaded):
        later saves go back there."""
        with self._write:
            with self._cv:
                self._pending = None  # the previous conversation's queued save is moot
            self.name, self.directory, self.generation = name, directory, generation
            self.saved_change = change

    def save_as(self, session: Session | None, change: int, root: Path, name: str,
                move_unnamed: bool) -> Path | None:
        """ctrl+s with a name: save under root/slugify(name). With `move_unnamed`, an
        autosave directory of a still-unnamed session moves there (no stale copy left
        behind); a directory holding another session is never overwritten (-N suffix)."""
        with self._write:
            self.name = name
            target = root / slugify(name)
            old = self.directory
            if target != old:
                if move_unnamed and old is not None and not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    old.rename(target)  # same filesystem (both under the sessions dir)
                else:
                    target = free_directory(root, slugify(name))
                    self.generation = None  # a fresh folder: none of ours there yet
                self.directory = target
        return self.save_now(session, change)

    def rename(self, name: str) -> Path:
        """The browser renamed the open session: rename it on disk between two writes."""
        with self._write:
            on_disk = current_generation(self.directory)
            if self.generation is not None and on_disk != self.generation:
                raise SessionConflict(f"The session in {self.directory} was changed by another process since "
                                      "this app saved it; not renaming it. Reopen it (ctrl+o) to see that version.")
            self.directory = rename_session(self.directory, name)
            self.name = name.strip()
            self.generation = current_generation(self.directory)
            return self.directory

    def delete(self, change: int) -> None:
        """The browser deleted the open session: a save still queued must not bring it
        back; the next change saves into a fresh directory."""
        with self._write:
            delete_session(self.directory)
            self.directory, self.generation = None, None
            with self._cv:
                self._pending = None
            self.saved_change = max(self.saved_change, change)
