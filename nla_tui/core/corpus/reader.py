"""Read a corpus of conversations, and refuse a bad one before anything slow starts.

Accepted inputs (docs/CORPUS.md):
- a `.json` file: one conversation (a list of messages or `{"messages": [...]}`, what
  `nla-tui run --messages` reads) or a list of conversations (each a list or an object
  with "messages");
- a `.jsonl` file: either one *message* per line (one conversation, as `--messages`) or
  one *conversation* per line (a list of messages or an object with "messages");
- a `.parquet` file, or a JSONL file of conversations, with a "messages" column (a list
  of message structs, or a JSON string of them) and an optional "id" / "conversation_id";
- a Hugging Face `datasets` directory written by `save_to_disk` (its Arrow files are
  read with pyarrow; `datasets` itself is not needed);
- a directory of such files (searched recursively, sorted by path; one kind of file only).

Messages are parsed by core.store.transcript (the `--messages` reader). Every problem
found (up to MAX_ERRORS) is reported with its file and line, in one InputError.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import InputError
from ..store.transcript import parse_message
from ..types import Message

MAX_ERRORS = 10
FILE_KINDS = {".json": "json", ".jsonl": "jsonl", ".parquet": "parquet", ".arrow": "arrow"}
ID_COLUMNS = ("id", "conversation_id")


@dataclass
class Conversation:
    id: str  # stable: "<file>:<line>", "<file>#<row>", an id column's value, or the file's name
    messages: list[Message]
    where: str  # file and line, for messages about it


@dataclass
class Corpus:
    conversations: list[Conversation]
    files: list[Path]
    digest: str  # sha256 over every input file's relative path and bytes
    kind: str  # json | jsonl | parquet | arrow (datasets)


class Problems:
    """Collects what is wrong with the input, so one run shows every bad line (up to a cap)."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, text: str) -> None:
        self.items.append(text)

    def raise_if_any(self, what: str) -> None:
        if self.items:
            more = len(self.items) - MAX_ERRORS
            lines = "\n  ".join(self.items[:MAX_ERRORS]) + (f"\n  … and {more} more" if more > 0 else "")
            raise InputError(f"{what} has {len(self.items)} problem(s); nothing was loaded or written. "
                             f"Fix these and run again:\n  {lines}")


def read_corpus(path: str | Path) -> Corpus:
    root = Path(path).expanduser()
    if not root.exists():
        raise InputError(f"{root} does not exist; give a conversation file or a folder of them.")
    files, kind = _input_files(root)
    problems = Problems()
    conversations: list[Conversation] = []
    for f in files:
        name = str(f.relative_to(root)) if root.is_dir() else f.name
        conversations.extend(_read_file(f, kind, name, problems))
    problems.raise_if_any(str(root))
    if not conversations:
        raise InputError(f"{root} holds no conversations; give at least one.")
    seen: dict[str, str] = {}
    for c in conversations:
        if c.id in seen:
            problems.add(f"{c.where}: conversation id {c.id!r} is used twice (also {seen[c.id]}); ids must be unique")
        seen[c.id] = c.where
    problems.raise_if_any(str(root))
    return Corpus(conversations, files, _digest(root, files), kind)


def _input_files(root: Path) -> tuple[list[Path], str]:
    if root.is_dir() and (root / "state.json").is_file():
        return _datasets_files(root), "arrow"
    if root.is_dir() and (root / "dataset_dict.json").is_file():
        raise InputError(f"{root} is a DatasetDict (several splits): give one split's folder, e.g. {root}/train.")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in FILE_KINDS
                   and not any(part.startswith(".") for part in p.relative_to(root).parts)) \
        if root.is_dir() else [root]
    if not files:
        raise InputError(f"{root} holds no .json, .jsonl or .parquet files.")
    kinds = {FILE_KINDS.get(p.suffix.lower()) for p in files}
    if None in kinds:
        raise InputError(f"{root}: unknown file type {root.suffix!r}; give .json, .jsonl, .parquet or a "
                         f"datasets folder (save_to_disk).")
    if len(kinds) > 1:
        by = {k: next(str(p) for p in files if FILE_KINDS[p.suffix.lower()] == k) for k in sorted(kinds)}
        raise InputError(f"{root} mixes formats ({', '.join(f'{k}: {v}' for k, v in by.items())}); a sweep "
                         f"reads one kind of file. Split them into separate folders.")
    return files, kinds.pop()


def _datasets_files(root: Path) -> list[Path]:
    try:
        state = json.loads((root / "state.json").read_text(encoding="utf-8"))
        names = [d["filename"] for d in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{root}/state.json is not a datasets save_to_disk state file ({e}).") from None
    files = [root / n for n in names]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise InputError(f"{root}: data file(s) {', '.join(missing)} named in state.json are missing.")
    return files


def _digest(root: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(root) if root.is_dir() else f.name).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _read_file(f: Path, kind: str, name: str, problems: Problems) -> list[Conversation]:
    if kind in ("parquet", "arrow"):
        return _read_table(f, kind, name, problems)
    try:
        text = f.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        problems.add(f"{name}: cannot read it ({e})")
        return []
    if not text.strip():
        problems.add(f"{name}: the file is empty")
        return []
    if kind == "json":
        return _read_json(text, name, problems)
    return _read_jsonl(text, name, problems)


def _is_message(obj: Any) -> bool:
    return isinstance(obj, dict) and "role" in obj and "messages" not in obj


def _conversation(obj: Any, cid: str, where: str, problems: Problems) -> Conversation | None:
    """One conversation from a list of messages or {"messages": [...], "id"?: ...}."""
    if isinstance(obj, dict) and isinstance(obj.get("messages"), list):
        own = next((obj[c] for c in ID_COLUMNS if obj.get(c) is not None), None)
        cid = str(own) if own is not None else cid
        obj = obj["messages"]
    if isinstance(obj, str):  # a messages column holding JSON text
        try:
            obj = json.loads(obj)
        except json.JSONDecodeError as e:
            problems.add(f"{where}: the messages value is not valid JSON ({e.msg})")
            return None
    if not isinstance(obj, list) or not obj:
        problems.add(f"{where}: expected a non-empty list of messages or {{\"messages\": [...]}}, "
                     f"got {str(obj)[:80]!r}")
        return None
    messages = []
    for i, m in enumerate(obj):
        try:
            messages.append(parse_message(m, i, where))
        except InputError as e:
            problems.add(str(e))
    return Conversation(cid, messages, where) if len(messages) == len(obj) else None


def _read_json(text: str, name: str, problems: Problems) -> list[Conversation]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        problems.add(f"{name}, line {e.lineno}: not valid JSON ({e.msg}, column {e.colno})")
        return []
    if isinstance(doc, list) and doc and all(isinstance(d, list) or (isinstance(d, dict) and "messages" in d)
                                            for d in doc):
        out = [_conversation(d, f"{name}#{i}", f"{name}, conversation {i}", problems) for i, d in enumerate(doc)]
        return [c for c in out if c]
    c = _conversation(doc, name, name, problems)
    return [c] if c else []


def _read_jsonl(text: str, name: str, problems: Problems) -> list[Conversation]:
    """One message per line (one conversation) or one conversation per line: the first
    line decides, and a line of the other kind is refused as a mixed file."""
    lines: list[tuple[int, Any]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            lines.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            problems.add(f"{name}, line {n}: not valid JSON ({e.msg}, column {e.colno})")
    if not lines:
        return []
    first_n, first = lines[0]
    per_message = _is_message(first)
    for n, obj in lines[1:]:
        if _is_message(obj) != per_message:
            kinds = ("a message", "a conversation")
            problems.add(f"{name}, line {n}: mixed formats: this line is {kinds[per_message]} but line {first_n} "
                         f"is {kinds[not per_message]}; a JSONL file holds one message per line (one "
                         f"conversation) or one conversation per line, not both")
    if per_message:
        messages = []
        for i, (n, obj) in enumerate(lines):
            if _is_message(obj):
                try:
                    messages.append(parse_message(obj, i, f"{name}, line {n}"))
                except InputError as e:
                    problems.add(str(e))
        return [Conversation(name, messages, name)] if len(messages) == len(lines) else []
    out = [_conversation(obj, f"{name}:{n}", f"{name}, line {n}", problems)
           for n, obj in lines if not _is_message(obj)]
    return [c for c in out if c]


def _read_table(f: Path, kind: str, name: str, problems: Problems) -> list[Conversation]:
    try:
        import pyarrow.ipc as ipc
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("Reading Parquet / datasets input needs pyarrow: pip install 'nla-tui[corpus]'.") from None
    try:
        if kind == "parquet":
            table = pq.read_table(f)
        else:
            with open(f, "rb") as fh:
                table = ipc.open_stream(fh).read_all()
    except Exception as e:  # pyarrow raises several types for a damaged file
        problems.add(f"{name}: not a readable {kind} file ({e})")
        return []
    if "messages" not in table.column_names:
        problems.add(f"{name}: no 'messages' column (columns: {', '.join(table.column_names)})")
        return []
    id_col = next((c for c in ID_COLUMNS if c in table.column_names), None)
    ids = table.column(id_col).to_pylist() if id_col else None
    out = []
    for r, msgs in enumerate(table.column("messages").to_pylist()):
        cid = str(ids[r]) if ids and ids[r] is not None else f"{name}#{r}"
        if isinstance(msgs, list):  # struct columns fill absent keys with None: drop those
            msgs = [{k: v for k, v in m.items() if v is not None} if isinstance(m, dict) else m for m in msgs]
        c = _conversation(msgs, cid, f"{name}, row {r}", problems)
        if c:
            out.append(c)
    return out


def iter_messages_json(conversation: Conversation) -> Iterator[dict]:
    """The messages as plain JSON (the sweep keeps them beside its rows to reopen a hit)."""
    for m in conversation.messages:
        yield m.to_json()


__all__ = ["Conversation", "Corpus", "Problems", "read_corpus", "iter_messages_json"]
