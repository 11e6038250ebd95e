"""Keeps the conversation on disk: ctrl+s, autosave after every job, on exit and on
SIGTERM / SIGHUP (a dropped SSH connection loses nothing).

The Session is built on the UI thread from what the UI already holds (ModelsReady's
ModelInfo, ConversationUpdated's messages, tokens and activations, ExplainDone's
explanations), so nothing here touches the engine or imports torch. Writing it runs
on a background thread (core.autosave.Autosaver does the locking and picks a fresh
directory), so a 100 MB activations file never freezes a key press.
"""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from ..core import events as ev
from ..core.steer_jobs import WhatIfDone
from ..core.store.autosave import Autosaver
from ..core.store.session import SESSION_FILE, Session, now_iso, slugify
from .state import UiState, job_kind

# Jobs whose end may have changed what a saved session would hold.
CHANGING_KINDS = ("chat", "explain", "explain_all", "whatif")


def default_name(now: datetime | None = None) -> str:
    """What an unnamed session is called until the user names it (ctrl+s)."""
    return (now or datetime.now()).strftime("session-%Y-%m-%d-%H%M")


class SessionKeeper:
    """One per app. `observe` every core event; `request_save` after a finished job;
    `save_now` on exit / signals / ctrl+s (blocks until written)."""

    def __init__(self, state: UiState, root: str | Path | None = None) -> None:
        self.state = state
        self.name = default_name()
        self.named = False  # the user chose the name (ctrl+s) or opened a saved session
        self.created = now_iso()
        self.activations: Any = None  # numpy [T, d_model] for self.tokens, from the worker
        self.messages: list = []
        self.tokens: list = []  # the last *captured* conversation (ChatStarted tokens have no activations)
        self.saver = Autosaver(self._snapshot_for_saver, root=root)
        self.last_saved: Path | None = None
        self._latest: Session | None = None  # built on the UI thread, written by the saver
        self._changes = 0  # bumped by every change worth saving
        self._saved_changes = 0
        self._pending_changes = 0
        self._again = False
        self._running = False
        self._mutex = threading.Lock()
        self._thread: threading.Thread | None = None
        self.read_only = False
        self.on_error: Callable[[Exception], None] | None = None  # background save failed  # a session opened without models cannot change: never autosave

    # ------------------------------------------------------------ bookkeeping

    @property
    def directory(self) -> Path | None:
        return self.saver.directory

    @directory.setter
    def directory(self, value: Path | None) -> None:
        self.saver.directory = value

    @property
    def dirty(self) -> bool:
        return self._changes != self._saved_changes

    def observe(self, event: ev.Event) -> bool:
        """Fold one event (after UiState did). True when a save is due now."""
        if isinstance(event, ev.ConversationUpdated):
            self.messages, self.tokens = list(event.messages), list(event.tokens)
            self.activations = getattr(event, "activations", None)
            self._changes += 1
        elif isinstance(event, (ev.ExplainDone, WhatIfDone)):
            self._changes += 1
        elif isinstance(event, (ev.JobFinished, ev.JobFailed)):
            # Save once per finished job, not per ExplainDone of an explain-all batch.
            return job_kind(event.job) in CHANGING_KINDS and self.dirty
        return False

    def adopt(self, session: Session, directory: Path | None) -> None:
        """The app now shows `session` (opened from disk): later saves go back there."""
        self.name, self.named, self.created = session.name, True, session.created
        self.messages, self.tokens = list(session.messages), list(session.tokens)
        self.activations = session.activations
        self.directory = directory
        self._saved_changes = self._changes  # nothing new to write yet

    def mark_saved(self) -> None:
        """What is shown now needs no save (the demo's example): the next change does."""
        self._saved_changes = self._changes

    def snapshot(self) -> Session | None:
        """The session as the UI shows it now (UI thread only); None with nothing to save."""
        st, tokens = self.state, self.tokens
        if st.info is None or not tokens:
            return None
        acts = self.activations
        if acts is not None and getattr(acts, "shape", (0,))[0] != len(tokens):
            acts = None  # never pair tokens with another conversation's activations
        explanations = [e for i in sorted(st.explanations) if i < len(tokens)
                        and st.tokens[i:i + 1] and st.tokens[i].token_id == tokens[i].token_id
                        for e in st.explanations[i]]
        return Session(name=self.name, info=st.info, messages=list(self.messages),
                       tokens=list(tokens), explanations=explanations, activations=acts,
                       steered=[b for b in st.steered if b.index < len(tokens)], created=self.created)

    def _snapshot_for_saver(self) -> Session | None:
        return self._latest

    # ------------------------------------------------------------ saving

    def request_save(self) -> None:
        """Autosave in the background (UI thread). A save already running is followed
        by another one, so the last job's results are never skipped."""
        with self._mutex:
            self._latest = self.snapshot()
            self._pending_changes = self._changes
            if self._running:  # the running saver picks this snapshot up when it is done
                self._again = True
                return
            self._again, self._running = False, True
            self._thread = threading.Thread(target=self._background, name="nla-autosave",
                                            daemon=True)
            self._thread.start()

    def _background(self) -> None:
        while True:
            with self._mutex:
                changes = self._pending_changes
                self._again = False
            if self.saver.save(wait=True) is not None:
                self._mark_saved(changes)
            elif self.saver.last_error is not None and self.on_error is not None:
                try:
                    self.on_error(self.saver.last_error)
                except Exception:  # the app is closing: save_now on exit reports it
                    pass
            with self._mutex:  # decided under the lock: a request now starts a new thread
                if not self._again:
                    self._running = False
                    return

    def _mark_saved(self, changes: int) -> None:
        self.last_saved = self.saver.directory
        self._saved_changes = max(self._saved_changes, changes)

    def save_now(self, only_if_dirty: bool = False) -> Path | None:
        """Write the current session and wait (UI thread). Errors: saver.last_error."""
        if only_if_dirty and not self.dirty:
            return None
        changes = self._changes
        with self._mutex:
            self._latest = self.snapshot()
        path = self.saver.save(wait=True)
        if path is not None:
            self._mark_saved(changes)
        return path

    def save_as(self, name: str, root: Path) -> Path | None:
        """ctrl+s with a name: save under root/slugify(name). The autosave directory of
        a still-unnamed session moves there (no stale copy left behind); a directory
        that holds a different session is never overwritten (a -N suffix is added)."""
        name = name.strip()
        old_dir, was_named = self.directory, self.named
        self.name, self.named = name, True
        target = root / slugify(name)
        if target != old_dir:
            if old_dir is not None and not was_named and not target.exists() and \
                    (old_dir / SESSION_FILE).exists():
                self._wait_background()
                old_dir.rename(target)  # same filesystem (both under the sessions dir)
            else:
                target = _free_directory(root, slugify(name))
            self.directory = target
        return self.save_now()

    def _wait_background(self) -> None:
        t = self._thread
        if t is not None and t.is_alive():
            t.join()


def _free_directory(root: Path, slug: str) -> Path:
    """root/slug, or root/slug-N: never a directory that holds another session."""
    for n in range(1, 1000):
        d = root / (slug if n == 1 else f"{slug}-{n}")
        if not (d / SESSION_FILE).exists():
            return d
    raise OSError(f"too many sessions named {slug!r} in {root}")
