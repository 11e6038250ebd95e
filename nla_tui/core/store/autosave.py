"""Autosave for the TUI: after every finished job, on exit, on SIGTERM and SIGHUP.

    saver = Autosaver(lambda: current_session_or_none())
    saver.install_signal_handlers(on_signal=lambda sig: app.exit())   # from the main thread
    ...  saver.save()            # after JobFinished (never blocks: skips if a save is running)
    ...  saver.save(wait=True)   # on exit

Why not just call save_session from a signal handler: the handler runs on the main
thread between two bytecodes, possibly in the middle of a save that holds the session
directory's flock; a nested save would deadlock on it. Here a signal that interrupts a
save is remembered and handled as soon as that save finishes.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Callable

from .session import SESSION_FILE, Session, default_sessions_root, save_session, slugify

SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s)


class Autosaver:
    """Saves `snapshot()` (None = nothing to save) to one directory, chosen on first save.

    `directory`: where to save (e.g. the session that was opened); default a new
    directory under `root` (default the user sessions dir) named after the session.
    """

    def __init__(self, snapshot: Callable[[], Session | None], directory: str | os.PathLike | None = None,
                 root: str | os.PathLike | None = None) -> None:
        self.snapshot = snapshot
        self.directory = Path(directory) if directory is not None else None
        self.root = Path(root) if root is not None else None
        self.last_error: Exception | None = None  # the UI shows it; autosave never raises
        self._lock = threading.Lock()
        self._pending: int | None = None
        self._on_signal: Callable[[int], None] | None = None

    def _new_directory(self, session: Session) -> Path:
        """A fresh directory: never reuse one holding a different session."""
        root = self.root or default_sessions_root()
        base = slugify(session.name)
        for n in range(1, 1000):
            d = root / (base if n == 1 else f"{base}-{n}")
            if not (d / SESSION_FILE).exists():
                return d
        raise OSError(f"too many sessions named {base!r} in {root}")

    def save(self, wait: bool = False) -> Path | None:
        """Save now; returns the directory, or None if nothing was saved (no session, a
        save already running and wait=False, or an error kept in `last_error`)."""
        if not self._lock.acquire(blocking=wait):
            return None
        try:
            session = self.snapshot()
            if session is None or not session.tokens:
                return None
            target = self.directory or self._new_directory(session)
            save_session(session, target)
            self.directory, self.last_error = target, None
            return target
        except Exception as e:  # a failed autosave must not take the app down
            self.last_error = e
            return None
        finally:
            self._lock.release()
            pending, self._pending = self._pending, None
            if pending is not None:
                self._finish(pending)

    def install_signal_handlers(self, on_signal: Callable[[int], None] | None = None) -> None:
        """SIGTERM/SIGHUP: save, then call on_signal(signum) (e.g. app.exit), or without
        one, die of the signal as if unhandled. Call from the main thread."""
        self._on_signal = on_signal
        for sig in SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        if self._lock.locked():  # a save is running (maybe the one we interrupted)
            self._pending = signum
            return
        self.save()
        self._finish(signum)

    def _finish(self, signum: int) -> None:
        if threading.current_thread() is not threading.main_thread():
            # Signal handlers (and signal.signal) belong to the main thread: re-deliver;
            # the handler there saves again (cheap: the activations file is reused).
            os.kill(os.getpid(), signum)
            return
        if self._on_signal is not None:
            self._on_signal(signum)
            return
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
