"""What a save may replace, decided under the directory lock (save_session calls these).

A session.json nla-tui cannot read, or one from a newer nla-tui, is never replaced (it
may be the user's only copy). A session another process saved, renamed or deleted since
this one was loaded is never replaced either: session.json carries a `generation`
(1 + the one it replaced) and a save must find on disk the generation it was loaded
with (issue 19: `steer` used to save its stale copy over the TUI's autosave). An
activations file is reused only when it holds exactly the bytes to be written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import InputError, SessionConflict
from .session_files import SESSION_FILE, is_regular, read_regular

SCHEMA_VERSION = 3  # what save_session writes; migrations.py upgrades older documents


def check_overwritable(path: Path) -> int | None:
    """Never replace a session.json we cannot read: it may be the user's only copy.
    Returns its generation (0 for files written before generations), None if absent."""
    if not path.exists():
        return None
    try:
        doc = json.loads(read_regular(path))
        version = doc.get("schema_version", 0) if isinstance(doc, dict) else None
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise InputError(f"Refusing to save over {path}: the existing file is unreadable ({e}). "
                         "It was left untouched; save under another name, or move it away "
                         "first.") from e
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        what = "not an nla-tui session" if not isinstance(version, int) else "from a newer nla-tui"
        raise InputError(f"Refusing to save over {path}: it is {what}. Save under another name.")
    generation = doc.get("generation", 0)
    return generation if isinstance(generation, int) and not isinstance(generation, bool) else 0


def check_generation(session: Any, on_disk: int | None, expect_new: bool, directory: Path) -> None:
    """Under the directory lock: is what is on disk what this save replaces?"""
    if expect_new and on_disk is not None:
        raise SessionConflict(f"{directory} now holds a session that another process saved there after this "
                              "one started; it was not replaced. Save into another folder, or remove that "
                              "session first.")
    if session.generation is None or session.generation == on_disk:
        return
    if session.origin is not None and session.origin != directory.resolve():
        return  # a copy into another folder (e.g. save as): nothing there was loaded
    if on_disk is None:
        raise SessionConflict(f"The session in {directory} was moved or deleted (by another process) since it "
                              "was loaded; it was not written back there. Reopen it where it is now.")
    raise SessionConflict(f"The session in {directory} changed on disk since it was loaded (another process "
                          f"saved it: generation {on_disk}, this copy has {session.generation}); it was not "
                          "overwritten, so that change is kept. Reload the session and redo this change.")


def current_generation(directory: str | os.PathLike) -> int | None:
    """The generation of the session saved in `directory`; None when there is none."""
    return check_overwritable(Path(directory) / SESSION_FILE)


def holds(path: Path, data: bytes) -> bool:
    """True when `path` is a regular file holding exactly `data`."""
    if not is_regular(path) or path.stat().st_size != len(data):
        return False
    return read_regular(path) == data
