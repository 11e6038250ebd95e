"""Notes a researcher leaves on a token or a span of tokens (plain data, no torch: the
session, the exports, the CLI and the TUI's notes panel and `/` share it).

    note = new_note(tokens_count, start=17, end=23, text="the model settles on 'port' here")
    find_notes(notes, compile_pattern("port"))   # the notes whose text matches

A note keeps its text exactly as typed; whoever shows it escapes it (the HTML export
escapes markup, the terminal shows control characters visibly).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable

from .errors import InputError

MAX_NOTE_CHARS = 10_000  # a paragraph or several; a pasted file belongs beside the session, not in it


@dataclass
class Note:
    """Text on tokens start..end (inclusive) of the conversation, or of branch `branch`
    when the session has branches (None: the conversation itself)."""

    start: int
    end: int
    text: str
    created: str
    branch: str | int | None = None

    def covers(self, index: int) -> bool:
        return self.start <= index <= self.end

    def span_label(self) -> str:
        return f"token {self.start}" if self.start == self.end else f"tokens {self.start}–{self.end}"

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"start": self.start, "end": self.end, "text": self.text, "created": self.created}
        if self.branch is not None:
            d["branch"] = self.branch
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Note":
        return cls(int(d["start"]), int(d["end"]), str(d["text"]), str(d["created"]), d.get("branch"))


def check_note(start: int, end: int, text: str, n_tokens: int) -> None:
    """Everything a note can have wrong, with what to do about it."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("The note is empty: write what you noticed about these tokens.")
    if len(text) > MAX_NOTE_CHARS:
        raise InputError(f"The note has {len(text)} characters; keep it under {MAX_NOTE_CHARS} "
                         f"(put longer material in a file beside the session and name it in the note).")
    if n_tokens <= 0:
        raise InputError("The conversation has no tokens to attach a note to.")
    for what, i in (("start", start), ("end", end)):
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n_tokens:
            raise InputError(f"Note {what} token {i!r} is out of range: the conversation has {n_tokens} tokens "
                             f"(0..{n_tokens - 1}).")
    if end < start:
        raise InputError(f"The note's span ends (token {end}) before it starts (token {start}): give the first "
                         f"token, then the last.")


def new_note(n_tokens: int, start: int, text: str, end: int | None = None,
             branch: str | int | None = None) -> Note:
    """A checked note on tokens start..end (end None: the start token alone), dated now (UTC)."""
    end = start if end is None else end
    check_note(start, end, text, n_tokens)
    return Note(start, end, text, datetime.now(timezone.utc).isoformat(timespec="seconds"), branch)


def find_notes(notes: Iterable[Note], pattern: re.Pattern[str], branch: str | int | None = None) -> list[Note]:
    """The notes of `branch` whose text matches `pattern` (the TUI's `/` compiles it), in
    token order."""
    hits = [n for n in notes if n.branch == branch and pattern.search(n.text)]
    return sorted(hits, key=lambda n: (n.start, n.end))


def notes_at(notes: Iterable[Note], index: int, branch: str | int | None = None) -> list[Note]:
    """The notes of `branch` covering token `index` (what the pane shows under the cursor)."""
    return [n for n in notes if n.branch == branch and n.covers(index)]
