"""Pre-quantised model cache: quantise a checkpoint once, start from the quantised copy after.

Quantising a 27B bf16 checkpoint to nf4 at load time reads 50 GiB and costs ~43 s per model
(BENCHMARKS.md, first measurements); the same model saved once after quantisation (16 GiB) reloads in ~11 s. So the
first nf4/int8 load of a checkpoint saves the quantised model into the user cache and later
loads read that instead.

Layout: `<cache root>/quantised/<key>/` holds `save_pretrained` output plus `ENTRY` (a JSON
marker written last: source, versions, file sizes and sampled digests). An entry is used only
when its marker matches and every file checks out; anything else is deleted (it is ours) and
rebuilt from the source checkpoint. A save goes to `.building-*` and is renamed into place, so a
killed save never leaves a half entry. The directory is bounded (least recently used entries go
first) and nothing in it that nla-tui did not write is ever deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import NlaError

ENTRY = "nla_quant_entry.json"  # marker: a directory without it is not a usable entry
BUILDING = ".nla-quant-building"  # marker inside a save in progress (identifies it as ours)
LAYOUT_VERSION = 1
# Bumped when loading.py's quantisation recipe changes (skip modules, double quant, dtypes).
RECIPE_VERSION = 1
GiB = 1 << 30
DEFAULT_MAX_BYTES = 128 * GiB  # three 27B nf4 models are ~43 GiB; room for two releases
_STALE_BUILD_S = 6 * 3600.0
_SAMPLES = 16  # 64 KiB chunks hashed per file: catches truncation and overwritten regions cheaply
_CHUNK = 64 << 10

Report = Callable[[float, str], None]


def quant_dir(root: Path | None = None) -> Path:
    """`<cache root>/quantised`; the root is NLA_TUI_CACHE or the user cache dir unless given."""
    if root is not None:
        return Path(root) / "quantised"
    from ...paths import cache_root  # platformdirs: only when no root is given

    return cache_root() / "quantised"


def max_bytes() -> int:
    from ..store.cache import parse_size

    v = os.environ.get("NLA_TUI_QUANT_CACHE_MAX_BYTES")
    return parse_size(v) if v else DEFAULT_MAX_BYTES


def _weight_files(path: Path) -> list[Path]:
    return sorted(f for f in path.iterdir() if f.is_file() and f.suffix in (".safetensors", ".bin", ".pt"))


def checkpoint_digest(path: Path, revision: str | None = None) -> str:
    """Identity of a checkpoint's contents without reading GiBs: the hub commit when there is
    one, the config and weight index bytes, and each weight file's name, size, mtime, resolved
    blob name (the HF cache names blobs by content hash) and first MiB (its safetensors header
    and leading data). Editing or replacing a weight file in place changes its size or mtime."""
    h = hashlib.sha256(f"rev={revision}\0".encode())
    for name in ("config.json", "model.safetensors.index.json"):
        p = path / name
        if p.is_file():
            h.update(name.encode() + b"\0" + p.read_bytes())
    for f in _weight_files(path):
        st = f.stat()
        h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\0{Path(os.path.realpath(f)).name}\0".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
    return h.hexdigest()[:32]


def versions() -> dict[str, str]:
    import torch
    import transformers

    out = {"transformers": transformers.__version__, "torch": torch.__version__.split("+")[0]}
    try:
        import bitsandbytes

        out["bitsandbytes"] = bitsandbytes.__version__
    except ImportError:  # nf4/int8 loads fail earlier with transformers' own message
        out["bitsandbytes"] = "missing"
    return out


def weight_format(quant: str) -> str:
    """The stored weights' format, by the kernel family that reads them: bitsandbytes' nf4/int8,
    or nla-tui's int4 (int4.FORMAT, read by gemlite or the portable path)."""
    if quant == "int4":
        from .int4 import FORMAT

        return FORMAT
    return f"bitsandbytes-{quant}"


def entry_key(digest: str, quant: str, compute_dtype: str, vers: dict[str, str] | None = None) -> str:
    """Everything that changes the saved bytes or whether they load: the checkpoint's contents,
    the quant, the weight format its kernel reads, the compute dtype (non-quantised weights are
    stored in it), and the versions of bitsandbytes, transformers and torch (their formats)."""
    ident = {"layout": LAYOUT_VERSION, "recipe": RECIPE_VERSION, "digest": digest, "quant": quant,
             "format": weight_format(quant), "compute_dtype": compute_dtype, **(vers or versions())}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


def _file_digest(f: Path, size: int) -> str:
    """sha256 of _SAMPLES chunks spread evenly over the file (and its last bytes)."""
    h = hashlib.sha256()
    with open(f, "rb") as fh:
        for k in range(_SAMPLES):
            fh.seek(max(0, (size - _CHUNK) * k // max(1, _SAMPLES - 1)))
            h.update(fh.read(_CHUNK))
    return h.hexdigest()


def _safetensors_ok(f: Path, size: int) -> bool:
    """The header parses and its last tensor ends exactly at the end of the file."""
    try:
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if n <= 0 or 8 + n > size:
                return False
            header = json.loads(fh.read(n))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        return 8 + n + max(ends, default=0) == size
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False


@dataclass
class Entry:
    path: Path
    meta: dict[str, Any]

    @property
    def size(self) -> int:
        return int(sum(self.meta.get("files", {}).values()))

    @property
    def last_used(self) -> float:
        with contextlib.suppress(OSError):
            return (self.path / ENTRY).stat().st_mtime
        return 0.0


def _read_entry(path: Path) -> Entry | None:
    try:
        meta = json.loads((path / ENTRY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return Entry(path, meta) if isinstance(meta, dict) and isinstance(meta.get("files"), dict) else None


def verify(entry: Entry, key: str) -> str | None:
    """None when the entry is whole, else why not (for the log line)."""
    m = entry.meta
    if m.get("key") != key or m.get("layout") != LAYOUT_VERSION:
        return "written for another checkpoint or version"
    if not (entry.path / "config.json").is_file():
        return "config.json is missing"
    digests = m.get("digests", {})
    for name, size in m["files"].items():
        f = entry.path / name
        try:
            actual = f.stat().st_size
        except OSError:
            return f"{name} is missing"
        if actual != size:
            return f"{name} is {actual} bytes, expected {size}"
        if name.endswith(".safetensors") and not _safetensors_ok(f, size):
            return f"{name} has a damaged header"
        if digests.get(name) != _file_digest(f, size):
            return f"{name} does not match its recorded digest"
    return None


class QuantCache:
    """One directory of quantised models; see the module docstring."""

    def __init__(self, root: Path | str | None = None, bound: int | None = None):
        """`root` is the cache root (the directory that also holds activations/, explanations/)."""
        self.dir = quant_dir(Path(root) if root is not None else None)
        self.bound = max_bytes() if bound is None else int(bound)

    def entries(self) -> list[Entry]:
        if not self.dir.is_dir():
            return []
        out = []
        for p in sorted(self.dir.iterdir()):
            e = _read_entry(p) if p.is_dir() and not p.name.startswith(".") else None
            if e is not None:
                out.append(e)
        return out

    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries())

    def lookup(self, key: str, log: Callable[[str], None] = lambda s: None) -> Path | None:
        """The entry's directory if it is whole; a damaged one is removed so it gets rebuilt."""
        path = self.dir / key
        if not path.exists():
            return None
        entry = _read_entry(path)
        why = "its marker is missing or unreadable" if entry is None else verify(entry, key)
        if why is None:
            with contextlib.suppress(OSError):
                os.utime(path / ENTRY)  # least recently used goes first when the cache is full
            return path
        log(f"quantised cache entry {key} is damaged ({why}); rebuilding it from the checkpoint")
        self.discard(path)
        return None

    def discard(self, path: Path) -> None:
        """Remove one entry or build directory, only if our marker is in it."""
        if (path / ENTRY).exists() or (path / BUILDING).exists():
            shutil.rmtree(path, ignore_errors=True)

    def _sweep_stale_builds(self) -> None:
        now = time.time()
        for p in self.dir.glob(".building-*"):
            with contextlib.suppress(OSError):
                if (p / BUILDING).exists() and now - (p / BUILDING).stat().st_mtime > _STALE_BUILD_S:
                    shutil.rmtree(p, ignore_errors=True)

    def make_room(self, need: int) -> bool:
        """Evict least recently used entries until `need` more bytes fit the bound and the disk."""
        if need > self.bound:
            return False
        entries = sorted(self.entries(), key=lambda e: e.last_used)
        total = sum(e.size for e in entries)
        while entries and total + need > self.bound:
            e = entries.pop(0)
            self.discard(e.path)
            total -= e.size
        free = shutil.disk_usage(self.dir).free
        return free > need + 2 * GiB

    def save(self, model, key: str, source: dict[str, Any], report: Report | None = None) -> Path | None:
        """save_pretrained into a build directory, then rename it to `key`. Returns the entry, or
        None when it does not fit (bound or disk); a failed save leaves nothing behind."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._sweep_stale_builds()
        expect = int(model.get_memory_footprint())
        if not self.make_room(expect):
            if report:
                report(1.0, f"not caching the quantised model: {expect / GiB:.1f} GiB does not fit the "
                            f"cache bound ({self.bound / GiB:.0f} GiB) or the free disk space")
            return None
        build = Path(tempfile.mkdtemp(prefix=".building-", dir=self.dir))
        (build / BUILDING).write_text(json.dumps({"pid": os.getpid(), "key": key}))
        done = threading.Event()

        def watch():  # save_pretrained has no callback: report the bytes written so far
            while not done.wait(0.5):
                written = sum(f.stat().st_size for f in build.iterdir() if f.is_file())
                report(min(0.99, written / max(1, expect)),
                       f"saving quantised copy for faster starts (once): {written / GiB:.1f}/{expect / GiB:.1f} GiB")
        watcher = threading.Thread(target=watch, daemon=True) if report else None
        try:
            if watcher:
                watcher.start()
            if getattr(model.config, "nla_int4", None):  # int4.py's own format (no transformers quantizer)
                from .int4 import save_quantised

                save_quantised(model, str(build))
            else:
                model.save_pretrained(str(build), max_shard_size="4GB")
            files = {f.name: f.stat().st_size for f in build.iterdir() if f.is_file() and f.name != BUILDING}
            meta = {"key": key, "layout": LAYOUT_VERSION, "created": time.time(), "source": source,
                    "files": files, "digests": {n: _file_digest(build / n, s) for n, s in files.items()}}
            tmp = build / (ENTRY + ".tmp")
            tmp.write_text(json.dumps(meta, indent=1), encoding="utf-8")
            os.replace(tmp, build / ENTRY)
            (build / BUILDING).unlink()
            try:
                os.replace(build, self.dir / key)
            except OSError:  # another process saved the same key first: keep theirs
                shutil.rmtree(build, ignore_errors=True)
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
        finally:
            done.set()
            if watcher:
                watcher.join()
        if report:
            report(1.0, f"saved quantised copy ({expect / GiB:.1f} GiB) in {self.dir / key}")
        return self.dir / key

    def clear(self) -> tuple[int, int, list[Path]]:
        """Remove every entry and build directory nla-tui wrote. Returns (removed, bytes, left
        alone): anything else in the directory is not ours and is kept."""
        removed, freed, foreign = 0, 0, []
        if not self.dir.is_dir():
            return 0, 0, []
        for p in sorted(self.dir.iterdir()):
            ours = p.is_dir() and ((p / ENTRY).exists() or (p / BUILDING).exists())
            if not ours:
                foreign.append(p)
                continue
            e = _read_entry(p)
            freed += e.size if e else 0
            shutil.rmtree(p, ignore_errors=True)
            removed += 1
        return removed, freed, foreign


def load_cached(ckpt, quant: str, compute_dtype: str, load: Callable[[str | None], Any],
                cache: QuantCache | None, report: Report | None = None,
                log: Callable[[str], None] = lambda s: None):
    """Load through the cache. `load(path_or_None)` loads the model from a cached entry's directory
    (already quantised) or, given None, from the checkpoint itself (quantising it). A cached entry
    that fails to load is discarded and the checkpoint is loaded (and saved again) instead."""
    if cache is None or quant not in ("nf4", "int4", "int8"):
        return load(None)
    key = entry_key(checkpoint_digest(ckpt.path, ckpt.revision), quant, compute_dtype)
    path = cache.lookup(key, log)
    if path is not None:
        try:
            return load(str(path))
        except NlaError:
            raise  # out of memory and the like: the entry is fine, the machine is not
        except Exception as e:  # unreadable despite the checks: never trust it again
            log(f"quantised cache entry {key} failed to load ({type(e).__name__}); rebuilding it")
            cache.discard(path)
    model = load(None)
    source = {"name": ckpt.name, "path": str(ckpt.path), "revision": ckpt.revision, "quant": quant,
              "format": weight_format(quant), "compute_dtype": compute_dtype, **versions()}
    try:
        cache.save(model, key, source, report)
    except OSError as e:  # disk full, read-only cache: the model is loaded, starting is what matters
        log(f"could not save the quantised copy ({e}); the next start quantises again")
    return model
