"""Saved sessions: a directory with session.json + an activations safetensors file.

DIR/session.json + DIR/activations-<sha16>.safetensors (tensor "activations", float32
[T, d_model]); docs/SESSION_SCHEMA.md has every field. Why the activations file name carries its digest: a save writes the new activations
file next to the old one, then commits by atomically replacing session.json, then
deletes the old file. A kill -9 or a full disk at any moment leaves session.json
pointing at a complete activations file. Unchanged activations (autosave after an
explanation) are not rewritten at all.

numpy + safetensors.numpy only, so `nla-tui open` works without torch. No pickle.
These functions are the stable API the TUI and CLI call:
    save_session(session, directory) -> Path
    load_session(path) -> Session
    list_sessions(root=None) -> list[SessionSummary]
    rename_session(directory, new_name) -> Path ; delete_session(directory)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file as st_load_file
from safetensors.numpy import save as st_save

from ..branch_tree import ROOT, Branch, BranchTree
from ..steer_results import SteerResult
from ..errors import InputError, NlaError
from ..notes import Note
from ..pair_jobs import PairInfo
from ..types import Explanation, Message, ModelInfo, TokenInfo, group_by_index
from .jsonsafe import dumps_finite
from .migrations import MIGRATIONS
from .session_guard import SCHEMA_VERSION, check_generation, check_overwritable, holds
from .session_schema import SchemaError, check_session_doc
from .session_files import (_dir_lock, _write_atomic, ACTS_RE as _ACTS_RE, SESSION_FILE, is_own_activations, is_own_temp,
                            is_regular, read_regular,
                            previous_activations as _previous_activations)



def now_iso() -> str:  # UTC, second resolution: what session.json stores
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Session:
    """Everything needed to reopen a conversation without loading any model."""

    name: str
    info: ModelInfo
    messages: list[Message] = field(default_factory=list)
    tokens: list[TokenInfo] = field(default_factory=list)
    explanations: list[Explanation] = field(default_factory=list)
    activations: np.ndarray | None = None  # float32 [len(tokens), info.d_model]
    steered: list[SteerResult] = field(default_factory=list)  # steered continuations; the conversation is unchanged
    notes: list[Note] = field(default_factory=list)  # a researcher's notes on tokens (core/notes.py)
    # Edited versions of the conversation (core/branch_tree.py): every branch but the root,
    # which is the conversation above; their activations live in the activation cache.
    branches: list[Branch] = field(default_factory=list)
    current_branch: int = ROOT  # the branch shown when the session was saved
    # The extra AV/AR pair (--extra-pair; core/pair_jobs.py) and its explanations of this
    # conversation's tokens, kept apart from `explanations`; None / [] without one.
    extra_pair: PairInfo | None = None
    pair_explanations: list[Explanation] = field(default_factory=list)
    created: str = field(default_factory=now_iso)
    updated: str = field(default_factory=now_iso)
    # The `generation` of the session.json this was loaded from or last saved as (each
    # save adds one); None for a session never on disk. save_session refuses to write
    # over a newer one: another process's change would be lost (see save_session).
    generation: int | None = field(default=None, compare=False, repr=False)
    # The folder that generation belongs to (None: wherever this is saved). Saving
    # into another folder is a copy, not an update, and is not checked against it.
    origin: Path | None = field(default=None, compare=False, repr=False)
    # What loading noticed but did not refuse (e.g. activations without a checksum).
    warnings: list[str] = field(default_factory=list, compare=False, repr=False)

    @property
    def n_explained(self) -> int:
        """Distinct token positions that have at least one explanation."""
        return len({e.index for e in self.explanations})

    def explanations_for(self, index: int) -> list[Explanation]:
        return [e for e in self.explanations if e.index == index]

    def branch_tree(self) -> BranchTree:
        """The branch tree: this conversation as the root (with the saved activations), the
        saved branches below it, the one shown when it was saved as current."""
        root = Branch(ROOT, None, None, list(self.messages), list(self.tokens), group_by_index(self.explanations),
                      created=self.created, activations=self.activations)
        return BranchTree(root, list(self.branches), self.current_branch)

    def set_branches(self, tree: BranchTree) -> None:
        """Keep `tree`'s branches below the root and which one is shown (the root's
        conversation and explanations stay this session's own fields)."""
        self.branches = [b for b in tree.ordered() if not b.is_root]
        self.current_branch = tree.current

    def to_json(self) -> dict[str, Any]:
        """session.json without the activations fields (save_session adds those)."""
        return {
            "schema_version": SCHEMA_VERSION, "name": self.name,
            "created": self.created, "updated": self.updated,
            "models": self.info.to_json(),
            "conversation": [m.to_json() for m in self.messages],
            "tokens": [t.to_json() for t in self.tokens],
            "explanations": [e.to_json() for e in self.explanations],
            "steered": [b.to_json() for b in self.steered],
            "notes": [n.to_json() for n in self.notes],
            "branches": [b.to_json() for b in self.branches],
            "current_branch": self.current_branch,
            **({"extra_pair": self.extra_pair.to_json(),
                "extra_explanations": [e.to_json() for e in self.pair_explanations]} if self.extra_pair else {}),
        }


@dataclass
class SessionSummary:
    """One row of the session browser; read from session.json only (cheap)."""

    path: Path
    name: str
    created: str
    updated: str
    preset: str | None
    n_tokens: int
    n_explained: int
    error: str | None = None  # set when session.json is unreadable; the row stays listed


def session_from_engine(engine: Any, name: str, explanations: list[Explanation] | None = None,
                        created: str | None = None) -> Session:
    """Snapshot a loaded Engine (duck-typed: info, messages, tokens, activations, and its
    `branches` tree when it has one: the root's conversation is the session's own, the
    other branches are kept with it). `explanations` are the root conversation's."""
    tree = getattr(engine, "branches", None)
    messages, tokens, acts = (tree.root.messages, tree.root.tokens, tree.root.activations) if tree is not None \
        else (engine.messages, engine.tokens, getattr(engine, "activations", None))
    session = Session(name=name, info=engine.info, messages=list(messages),
                      tokens=list(tokens), explanations=list(explanations or []),
                      activations=None if acts is None else np.array(acts, dtype=np.float32),
                      steered=list(getattr(engine, "steered", [])), created=created or now_iso())
    if tree is not None:
        session.set_branches(tree)
    pair = getattr(engine, "pair", None)
    if pair is not None:
        session.extra_pair = pair.info
        held = engine.pair_explanations_for(acts)
        session.pair_explanations = [e for i in sorted(held) for e in held[i]]
    return session


def slugify(name: str) -> str:
    """A directory name for a session name: lowercase, [a-z0-9._-], never empty."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.strip().lower()).strip("-.")
    return slug[:80] or "session"


def free_directory(root: Path, slug: str) -> Path:
    """root/slug, or root/slug-N: never a directory that holds another session."""
    for d in (root / (slug if n == 1 else f"{slug}-{n}") for n in range(1, 1000)):
        if not (d / SESSION_FILE).exists():
            return d
    raise OSError(f"too many sessions named {slug!r} in {root}")


def default_sessions_root() -> Path:
    from ...paths import sessions_dir  # lazy: keeps platformdirs off the import path of tests
    return sessions_dir()


# ------------------------------------------------------------------ save


def save_session(session: Session, directory: str | os.PathLike, expect_new: bool = False) -> Path:
    """Write `session` to `directory` atomically and return the directory.

    Sets `session.updated` and `session.generation`. Raises InputError if the directory
    already holds an unreadable or newer session.json (it is never overwritten), NlaError
    if the disk is full or unwritable (the previous save stays loadable), and
    SessionConflict when, checked under the directory lock, the session on disk is not
    the one this save replaces: a generation other than `session.generation` (another
    process saved, renamed or deleted it since), or any session at all with `expect_new`
    (`run --out` into a folder that was empty when it started).
    """
    directory = Path(directory)
    _validate(session, directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with _dir_lock(directory):
            target = directory / SESSION_FILE
            on_disk = check_overwritable(target)
            check_generation(session, on_disk, expect_new, directory)
            previous = _previous_activations(target)
            session.updated = now_iso()
            doc = session.to_json()
            doc["activations_file"] = None
            doc["activations_sha256"] = None
            if session.activations is not None:
                acts = np.ascontiguousarray(session.activations, dtype=np.float32)
                digest = hashlib.sha256(acts.tobytes()).hexdigest()
                fname = f"activations-{digest[:16]}.safetensors"
                blob = st_save({"activations": acts}, metadata={"sha256": digest})
                apath = directory / fname
                # Content-addressed, but a file of that name is reused only when its bytes
                # are exactly these: one damaged in place (same size) is rewritten.
                if not holds(apath, blob):
                    _write_atomic(apath, blob)
                doc["activations_file"], doc["activations_sha256"] = fname, digest
            doc["generation"] = (on_disk or 0) + 1
            _write_atomic(target, dumps_finite(doc, f"session {directory}", indent=1).encode("utf-8"))
            session.generation, session.origin = doc["generation"], directory.resolve()
            _cleanup(directory, keep=doc["activations_file"], previous=previous)
    except OSError as e:
        raise NlaError(f"Could not save session to {directory}: {e.strerror or e}. The previous "
                       "save (if any) is intact; free some disk space or choose another "
                       "folder, then save again.") from e
    return directory


def _cleanup(directory: Path, keep: str | None, previous: str | None) -> None:
    """Delete only what nla-tui itself wrote and no longer needs: the activations file
    the previous session.json referenced, orphans of an interrupted save (recognised by
    their self-describing digest), and its own temp files of dead writers. Anything else
    in the directory is the user's and stays."""
    for entry in directory.iterdir():
        name = entry.name
        if name == keep:
            continue
        if name == previous or is_own_temp(name) or is_own_activations(entry):
            with contextlib.suppress(OSError):
                entry.unlink()


def _validate(session: Session, directory: Path) -> None:
    acts = session.activations
    if acts is not None and (acts.ndim != 2 or acts.shape[0] != len(session.tokens)):
        raise InputError(f"Cannot save session to {directory}: activations have shape "
                         f"{tuple(acts.shape)} but there are {len(session.tokens)} tokens.")
    if bad := _index_out_of_range(session):
        raise InputError(f"Cannot save session to {directory}: it has {bad}.")
    if bad := _note_out_of_range(session.notes, len(session.tokens)):
        raise InputError(f"Cannot save session to {directory}: {bad}.")
    problem = branches_problem(session)
    if problem:
        raise InputError(f"Cannot save session to {directory}: {problem}.")


def _index_out_of_range(session: Session) -> str | None:
    """What is wrong with the first explanation or steered continuation whose token is not
    in the conversation it belongs to (a steer made on a branch counts that branch's tokens)."""
    sizes = {ROOT: len(session.tokens), **{b.id: len(b.tokens) for b in session.branches}}
    if session.pair_explanations and session.extra_pair is None:
        return "extra-pair explanations but no extra_pair saying which pair made them"
    for what, items in (("an explanation", session.explanations), ("a steered continuation", session.steered),
                        ("an extra-pair explanation", session.pair_explanations)):
        for e in items:
            where = getattr(e, "branch", None)
            n = sizes.get(ROOT if where is None else where)
            if n is None:
                return f"{what} for token {e.index} of branch {where}, which the session does not have"
            if not 0 <= e.index < n:
                whose = "the session" if where is None else f"its branch {where}"
                return f"{what} for token {e.index}, but {whose} has {n} tokens (0..{n - 1})"
    return None


def _note_out_of_range(notes: list[Note], n_tokens: int) -> str | None:
    """What is wrong with the first note whose span is not inside the conversation (a note on
    another branch is checked only for order: that branch's tokens are its own)."""
    for k, n in enumerate(notes):
        if n.end < n.start or (n.branch is None and not 0 <= n.start <= n.end < n_tokens):
            return (f"note {k} ({n.span_label()}) is not a span inside the conversation's {n_tokens} tokens "
                    f"(0..{n_tokens - 1})")
    return None


def branches_problem(session: Session) -> str | None:
    """What is inconsistent in the session's branch tree, or None: ids unique and above
    the root's, each parent an earlier branch (so the tree has no cycle), the edited
    message one of the parent's, every explanation on one of the branch's tokens, the
    current branch one that exists."""
    seen = {ROOT: len(session.messages)}
    for b in session.branches:
        if b.id in seen:
            return f"branch {b.id} appears twice (or is the root's id)"
        if b.parent not in seen or b.parent >= b.id:
            return f"branch {b.id}'s parent {b.parent} is not an earlier branch"
        if b.edited is None or not 0 <= b.edited < seen[b.parent]:
            return f"branch {b.id} edits message {b.edited}, which its parent does not have"
        for i in b.explanations:
            if not 0 <= i < len(b.tokens):
                return f"branch {b.id} has an explanation for token {i}, but it has {len(b.tokens)} tokens"
        seen[b.id] = len(b.messages)
    if session.current_branch not in seen:
        return f"the shown branch {session.current_branch} does not exist"
    return None


# ------------------------------------------------------------------ load




# What a well-formed JSON document with a wrong shape raises on the way into the dataclasses.
_MALFORMED = (KeyError, TypeError, ValueError, AttributeError, OverflowError)


def _read_doc(path: Path) -> dict[str, Any]:
    try:
        raw = read_regular(path)
    except FileNotFoundError:
        raise InputError(f"No session at {path.parent}: {path.name} is missing. Pass a "
                         "directory written by nla-tui (it holds session.json).") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise InputError(f"Session file {path} is corrupted or truncated ({e}); it was left "
                         "untouched. Restore it from a backup or delete the session.") from e
    if not isinstance(doc, dict):
        raise InputError(f"Session file {path} is not a JSON object; it was left untouched.")
    return doc


def _upgrade(doc: dict[str, Any], path: Path) -> dict[str, Any]:
    version = doc.get("schema_version", 0)
    if not isinstance(version, int) or version < 0:
        raise InputError(f"Session file {path} has an invalid schema_version {version!r}.")
    if version > SCHEMA_VERSION:
        raise InputError(f"Session {path} was written by a newer nla-tui (schema {version}; "
                         f"this version reads up to {SCHEMA_VERSION}). Upgrade: "
                         "pip install -U nla-tui.")
    while version < SCHEMA_VERSION:
        doc = MIGRATIONS[version](doc, path.parent)
        version = doc["schema_version"]
    return doc


def _checked(doc: dict[str, Any], path: Path) -> dict[str, Any]:
    """The whole document against the schema (session_schema.py), before any field is used."""
    try:
        check_session_doc(doc)
    except SchemaError as e:
        raise InputError(f"Session file {path} has a malformed field: {e}. It was left untouched; restore it from a "
                         "backup, fix that field, or delete the session.") from None
    return doc


def _resolve(path: str | os.PathLike) -> tuple[Path, Path]:
    p = Path(path).expanduser()
    if p.name == SESSION_FILE and not p.is_dir():
        return p.parent, p
    return p, p / SESSION_FILE


def load_session(path: str | os.PathLike) -> Session:
    """Load a session directory (or its session.json). Never writes anything.

    Older schema versions are migrated in memory; a newer, corrupted or truncated
    file raises InputError naming the file and what to do.
    """
    directory, jpath = _resolve(path)
    doc = _checked(_upgrade(_read_doc(jpath), jpath), jpath)
    try:
        info = ModelInfo.from_json(doc["models"])
        messages = [Message.from_json(m) for m in doc.get("conversation", [])]
        tokens = [TokenInfo.from_json(t) for t in doc.get("tokens", [])]
        explanations = [Explanation.from_json(e) for e in doc.get("explanations", [])]
        steered = [SteerResult.from_json(b) for b in doc.get("steered", [])]
        notes = [Note.from_json(n) for n in doc.get("notes", [])]
        branches = [Branch.from_json(b) for b in doc.get("branches", [])]
        pair = PairInfo.from_json(doc["extra_pair"]) if doc.get("extra_pair") is not None else None
        pair_exps = [Explanation.from_json(e) for e in doc.get("extra_explanations", [])]
        session = Session(name=str(doc["name"]), info=info, messages=messages, tokens=tokens,
                          explanations=explanations, steered=steered, notes=notes, branches=branches,
                          extra_pair=pair, pair_explanations=pair_exps,
                          current_branch=int(doc.get("current_branch", ROOT)), created=str(doc["created"]),
                          updated=str(doc["updated"]), generation=doc.get("generation", 0),
                          origin=directory.resolve())
    except _MALFORMED as e:
        raise InputError(f"Session file {jpath} is missing or has a malformed field ({e!r}); "
                         "it was left untouched.") from e
    session.activations = _load_activations(directory, doc, len(tokens), info.d_model, session.warnings)
    if bad := _index_out_of_range(session):
        raise InputError(f"Session file {jpath} has {bad}; it was left untouched.")
    if bad := _note_out_of_range(session.notes, len(tokens)):
        raise InputError(f"Session file {jpath} has a {bad}; it was left untouched.")
    problem = branches_problem(session)
    if problem:
        raise InputError(f"Session file {jpath} has a malformed branch tree: {problem}. It was left untouched.")
    return session


def _load_activations(directory: Path, doc: dict[str, Any], n_tokens: int,
                      d_model: int, warnings: list[str]) -> np.ndarray | None:
    fname = doc.get("activations_file")
    if fname is None:
        return None
    # Only our own file names: a session.json must not make us read arbitrary paths.
    if not isinstance(fname, str) or not _ACTS_RE.match(fname):
        raise InputError(f"Session in {directory} names an unexpected activations file {fname!r}.")
    apath = directory / fname
    if apath.exists() and not is_regular(apath):
        raise InputError(f"Activations file {apath} is not a regular file (a FIFO, socket or device); it was "
                         "left untouched. Restore the real file or re-run the conversation.")
    try:
        tensors = st_load_file(str(apath))
        acts = tensors["activations"]
    except FileNotFoundError:
        raise InputError(f"Session in {directory} is incomplete: {fname} is missing. The "
                         "conversation cannot be explained without it; restore it or "
                         "re-run the conversation.") from None
    except Exception as e:  # SafetensorError on truncation, KeyError on a foreign file
        raise InputError(f"Activations file {apath} is corrupted or truncated ({e}); it was "
                         "left untouched.") from e
    want = doc.get("activations_sha256")
    if not want:
        warnings.append(f"session.json records no checksum for {fname}, so its activations are unverified "
                        "(damage on disk would go unnoticed); the next save records one.")
    elif hashlib.sha256(np.ascontiguousarray(acts).tobytes()).hexdigest() != want:
        raise InputError(f"Activations file {apath} does not match its checksum in "
                         "session.json (corrupted on disk); it was left untouched.")
    if acts.dtype != np.float32 or acts.ndim != 2 or acts.shape[0] != n_tokens or (
            d_model and acts.shape[1] != d_model):
        raise InputError(f"Activations file {apath} has shape {acts.shape} {acts.dtype}; "
                         f"expected float32 [{n_tokens}, {d_model}] for this session.")
    return acts


# ------------------------------------------------------------------ browse


def list_sessions(root: str | os.PathLike | None = None) -> list[SessionSummary]:
    """Sessions under `root` (default: the user sessions dir), newest first.

    Reads only session.json. Unreadable ones are listed with `error` set so the
    browser can show (and offer to delete) them rather than hiding them.
    """
    root = Path(root) if root is not None else default_sessions_root()
    if not root.is_dir():
        return []
    out: list[SessionSummary] = []
    for d in sorted(root.iterdir()):
        jpath = d / SESSION_FILE
        if not jpath.is_file():
            continue
        try:
            doc = _checked(_upgrade(_read_doc(jpath), jpath), jpath)
            out.append(SessionSummary(
                path=d, name=str(doc["name"]), created=str(doc["created"]),
                updated=str(doc["updated"]), preset=(doc.get("models") or {}).get("preset"),
                n_tokens=len(doc.get("tokens", [])),
                n_explained=len({int(e["index"]) for e in doc.get("explanations", [])})))
        except (NlaError, *_MALFORMED) as e:
            out.append(SessionSummary(path=d, name=d.name, created="", updated="", preset=None,
                                      n_tokens=0, n_explained=0, error=str(e)))
    out.sort(key=lambda s: s.updated, reverse=True)
    return out


def rename_session(directory: str | os.PathLike, new_name: str) -> Path:
    """Set the session's name; also move its directory to slugify(new_name) when that
    name is free. Returns the (possibly new) directory."""
    if not new_name.strip():
        raise InputError("A session name cannot be empty.")
    directory, session = Path(directory), load_session(directory)
    session.name = new_name.strip()
    save_session(session, directory)
    target = directory.parent / slugify(new_name)
    if target != directory and not target.exists():
        os.rename(directory, target)
        return target
    return directory


def delete_session(directory: str | os.PathLike) -> None:
    """Delete a session directory. Refuses directories holding files nla-tui did not
    write, so a mistyped path can never wipe unrelated data."""
    if not (Path(directory) / SESSION_FILE).exists():
        raise InputError(f"{directory} is not a session directory (no {SESSION_FILE}).")
    directory = Path(directory)
    referenced = _previous_activations(directory / SESSION_FILE)
    foreign = [p.name for p in directory.iterdir()
               if not (p.name == SESSION_FILE or p.name == referenced or is_own_temp(p.name)
                       or is_own_activations(p))]
    if foreign:
        raise InputError(f"Not deleting {directory}: it holds files nla-tui did not write "
                         f"({', '.join(sorted(foreign)[:5])}). Remove them by hand first.")
    shutil.rmtree(directory)
