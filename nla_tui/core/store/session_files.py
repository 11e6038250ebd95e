"""Which files in a session directory nla-tui wrote, and where a new session may go.

nla-tui deletes only files it can prove it wrote (never "everything that looks like
ours"): the activations file the replaced session.json referenced, orphans of an
interrupted save (their name's 16 hex digits begin the sha256 stored in their own
safetensors metadata), and its own temp files (exact name pattern, writer dead).
`check_out_dir` is run before any model loads, so a bad `--out` costs nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import stat
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

from ..errors import InputError

SESSION_FILE = "session.json"
ACTS_RE = re.compile(r"^activations(-[0-9a-f]{16})?\.safetensors$")
# session._write_atomic's temp names: .<final name>.<pid>.<8 hex>.tmp
_TMP_RE = re.compile(r"^\.(session\.json|activations-[0-9a-f]{16}\.safetensors)\.(\d+)\.[0-9a-f]{8}\.tmp$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def is_own_temp(name: str) -> bool:
    """A temp file one of nla-tui's saves left behind (the exact name _write_atomic
    uses), whose writer is gone. A user's `.notes.txt.tmp` never matches."""
    m = _TMP_RE.match(name)
    if not m:
        return False
    pid = int(m.group(2))
    return pid == os.getpid() or not _pid_alive(pid)


def read_regular(path: Path) -> bytes:
    """The bytes of a regular file. A FIFO, socket or device is refused (InputError)
    instead of read: reading a FIFO named session.json would block forever. Opened
    non-blocking first, so even the open cannot hang; FileNotFoundError passes through."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError(f"{path} is not a regular file (a FIFO, socket or device); nla-tui reads only "
                             "files it can finish reading. Move it away or replace it with the real file.")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as fh:
            fd = -1  # the file object owns it now
            return fh.read()
    finally:
        if fd >= 0:
            os.close(fd)


def is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def is_own_activations(path: Path) -> bool:
    """An activations file save_session wrote: content-addressed name whose 16 hex
    digits start the sha256 that save_session put in the file's own metadata."""
    m = ACTS_RE.match(path.name)
    if not m or not m.group(1):
        return False
    if not is_regular(path):  # never open a FIFO: it would block
        return False
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if not 0 < n <= 1 << 20:
                return False
            header = json.loads(fh.read(n))
        digest = (header.get("__metadata__") or {}).get("sha256", "")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(digest, str) and digest.startswith(m.group(1)[1:])


def previous_activations(target: Path) -> str | None:
    """The activations file the session.json about to be replaced points at."""
    try:
        doc = json.loads(read_regular(target))
        name = doc.get("activations_file") if isinstance(doc, dict) else None
    except (OSError, ValueError, UnicodeDecodeError, InputError, RecursionError):
        return None
    return name if isinstance(name, str) and ACTS_RE.match(name) else None


def check_out_dir(directory: str | os.PathLike, force: bool = False) -> Path:
    """Validate `run --out DIR` before any work: DIR must be new or empty, or (with
    force) an existing session / non-empty folder, whose session it then replaces
    (files nla-tui did not write stay). And it must be writable. Returns DIR."""
    d = Path(directory).expanduser()
    if d.exists() and not d.is_dir():
        raise InputError(f"--out {d} is a file, not a folder. Give a new folder for the session.")
    if d.is_dir():
        entries = sorted(p.name for p in d.iterdir())
        if (d / SESSION_FILE).exists() and not force:
            raise InputError(f"--out {d} already holds a session. Choose another folder, or pass "
                             "--force to replace that session (files nla-tui did not write are kept).")
        if entries and not force:
            raise InputError(f"--out {d} is not empty ({', '.join(entries[:3])}"
                             f"{', ...' if len(entries) > 3 else ''}). Give a new or empty folder, "
                             "or pass --force to write the session beside those files (none is deleted).")
    probe = d
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"--out {d}: {probe} is a file, so the folder cannot be created.")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise InputError(f"--out {d} is not writable ({e.strerror or e} in {probe}). Choose a "
                         "folder you can write to.") from None
    return d


def check_export_target(out: str | os.PathLike) -> Path:
    """`export --out FILE` must never replace a session's own files or a folder."""
    p = Path(out).expanduser()
    if p.is_dir():
        raise InputError(f"--out {p} is a folder; give a file name such as {p / 'session.html'}.")
    if p.name == SESSION_FILE or ACTS_RE.match(p.name):
        raise InputError(f"Refusing to write the export over {p}: that is a session file. Give "
                         "another --out name (e.g. session.md beside it).")
    return p


@contextlib.contextmanager
def _dir_lock(directory: Path) -> Iterator[None]:
    """Two processes saving the same session serialise instead of deleting each other's
    files. flock on the directory itself, so no lock file clutters the session."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _write_atomic(path: Path, data: bytes) -> None:
    """temp file + fsync + rename + fsync(dir): the old file survives any crash or ENOSPC."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
