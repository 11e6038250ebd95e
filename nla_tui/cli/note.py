"""`nla-tui note SESSION --token I [--end J] --text "…"`: leave a note on a token or a span
of a saved session (loads no model); `--list` shows the notes, `--find REGEX` searches them."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from .output import say


def add_subparser(sub) -> None:
    p = sub.add_parser("note", help="add, list or search notes on a saved session's tokens",
                       description="Notes travel with the session and into every export (Markdown, JSON, "
                                   "HTML inline beside their tokens). Loads no model.")
    p.add_argument("session", help="session directory (or its session.json)")
    p.add_argument("--token", type=int, help="the (first) token the note is on")
    p.add_argument("--end", type=int, help="the last token of a span (default: --token alone)")
    p.add_argument("--text", help="the note")
    p.add_argument("--list", action="store_true", help="list the session's notes")
    p.add_argument("--find", metavar="REGEX", help="list the notes whose text matches (case-insensitive "
                                                    "unless the pattern has a capital)")
    p.set_defaults(func=cmd_note)


def cmd_note(args: argparse.Namespace) -> int:
    from ..core.errors import InputError
    from ..core.notes import find_notes, new_note
    from .common import load_session_noting

    adding = args.token is not None or args.text is not None or args.end is not None
    if adding == bool(args.list or args.find):
        raise InputError("Give either --token I --text \"…\" (add a note) or --list / --find REGEX (read them).")
    session = load_session_noting(args.session)
    if not adding:
        notes = session.notes if args.find is None else find_notes(session.notes, _pattern(args.find))
        for n in sorted(notes, key=lambda n: (n.start, n.end)):
            say(f"{n.span_label():<16} {n.created}  {n.text}", keep_layout=False)
        say(f"({len(notes)} of {len(session.notes)} notes)")
        return 0
    if args.token is None or args.text is None:
        raise InputError("A note needs --token I (its first token) and --text \"…\".")
    note = new_note(len(session.tokens), args.token, args.text, args.end)  # checked before anything is written
    from .session_update import add_to_saved

    kept = add_to_saved(session, Path(args.session), lambda s: s.notes.append(note), "note",
                        "run the command again")
    say(f"note on {note.span_label()} kept in the session ({len(kept.notes)} notes): {args.session}")
    return 0


def _pattern(text: str) -> re.Pattern[str]:
    from ..core.errors import InputError

    try:
        return re.compile(text, 0 if any(c.isupper() for c in text) else re.IGNORECASE)
    except re.error as e:
        raise InputError(f"--find {text!r} is not a valid regular expression: {e}.") from None
