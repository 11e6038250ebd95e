"""Adding something (a steered continuation, a note) to a saved session from the command line,
without losing what another process saved meanwhile."""

from __future__ import annotations

from pathlib import Path
from typing import Callable


def add_to_saved(session, path: Path, add: Callable[[object], None], what: str, kept_elsewhere: str):
    """add(session) and save it. If another process saved the session meanwhile (the TUI's
    autosave, another command), `add` is applied to that newer version instead of
    overwriting it; if the conversation itself changed, or the session was moved or
    deleted, it is refused with a message ending in `kept_elsewhere` (where the user
    still has the thing). Returns the session that was saved."""
    from ..core.errors import InputError, SessionConflict
    from ..core.store.session import load_session, save_session
    from .output import warn

    directory = path.parent if path.name == "session.json" else path
    add(session)
    try:
        save_session(session, directory)
        return session
    except SessionConflict:
        pass
    try:
        current = load_session(directory)
    except InputError as e:
        raise InputError(f"The session was moved, deleted or damaged meanwhile, so the {what} was not kept "
                         f"in it ({e}); {kept_elsewhere}.") from None
    if [t.token_id for t in current.tokens] != [t.token_id for t in session.tokens]:
        raise InputError(f"The session in {directory} was given another conversation meanwhile (another "
                         f"process saved it); the {what} belongs to the old one and was not added; {kept_elsewhere}.")
    add(current)
    save_session(current, directory)
    warn(f"the session in {directory} was saved by another process meanwhile; the {what} was added to "
         "that newer version (nothing of it was overwritten).")
    return current
