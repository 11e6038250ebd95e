"""On-disk caches so nothing is computed twice: subject activations and AV explanations.

Layout (versioned, so a future format change never misreads old files):

    <root>/activations/v1/<2 hex>/<sha256>.safetensors
    <root>/explanations/v1/<2 hex>/<sha256>.json
    <root>/<kind>/v1/.lock                      fcntl lock for writers/eviction

Why this shape:
- Entries are content-keyed files written to a temp name and `os.replace`d, so a
  reader (in this or another nla-tui process) sees a whole old file, a whole new
  file, or nothing -- never half a file. Readers take no lock: POSIX keeps an
  unlinked file readable for whoever already opened it.
- Writers and eviction hold an exclusive `fcntl.flock` on `.lock`, so two processes
  sharing the directory never evict each other's half-counted state.
- Every entry carries a sha256 of its payload; a torn or bit-rotted entry is
  deleted on read and reported as a miss, so the caller recomputes it.
- LRU by mtime: a hit `os.utime`s the file (atime is unreliable under relatime).

numpy + safetensors.numpy only: no torch, no pickle.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from ..errors import InputError
from ..types import Explanation, ModelInfo, Sampling

LAYOUT_VERSION = 1
GiB = 1 << 30
MiB = 1 << 20
DEFAULT_ACTIVATION_BYTES = 4 * GiB
DEFAULT_EXPLANATION_BYTES = 64 * MiB
# A temp file older than this belongs to a writer that died (kill -9, power loss).
_STALE_TMP_S = 3600.0


def default_cache_root() -> Path:
    """The cache root: env NLA_TUI_CACHE if set, else the platform user cache dir."""
    from ...paths import cache_root

    return cache_root()


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str | int) -> int:
    """'4GiB', '512M', '1.5g', 1000 -> bytes (binary units either way)."""
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(str(text))
    if not m:
        raise InputError(f"Cannot read cache size {text!r}: write a number with an optional "
                         "unit, e.g. 4GiB, 512MiB or 1000000.")
    unit = (m.group(2) or "").lower()[:1]
    return int(float(m.group(1)) * _UNITS[unit])


def _env_size(name: str, default: int) -> int:
    v = os.environ.get(name)
    return parse_size(v) if v else default


def activation_digest(vec: np.ndarray) -> str:
    """sha256 of a vector's float32 little-endian bytes (dtype/layout independent)."""
    a = np.ascontiguousarray(np.asarray(vec, dtype="<f4"))
    return hashlib.sha256(a.tobytes()).hexdigest()


def model_fingerprint(path: str) -> str:
    """Identity of a local model directory or weights file, without hashing GiBs: every
    weight file's size, mtime, header and sampled blocks (see fingerprint.py). Not
    memoised: a rewritten value head must change it within one process too."""
    from ..fingerprint import checkpoint_digest

    return checkpoint_digest(Path(path))[:32]


def _model_identity(name: str, revision: str | None) -> str:
    if revision:
        return f"{name}@{revision}"
    if name and os.path.exists(name):
        return f"local:{model_fingerprint(os.path.abspath(name))}"
    return name


def subject_identity(info: ModelInfo) -> dict[str, Any]:
    """What makes two activation captures interchangeable: same weights, quantisation, layer."""
    return {"subject": _model_identity(info.subject, (info.revision or {}).get("subject")),
            "quant": info.quant, "layer": int(info.layer)}


def av_identity(info: ModelInfo) -> dict[str, Any]:
    """What makes two explanations interchangeable. The AR is included because a cached
    Explanation carries the AR's score; the injection scale changes what the AV reads."""
    rev = info.revision or {}
    return {"av": _model_identity(info.av, rev.get("av")),
            "ar": _model_identity(info.ar, rev.get("ar")),
            "quant": info.quant, "injection_scale": info.injection_scale,
            "mse_scale": info.mse_scale, "fve_variance": info.fve_variance}


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    puts: int = 0
    corrupt: int = 0
    evicted: int = 0


class _DiskLRU:
    """A directory of content-keyed files with atomic writes, checksums and LRU eviction."""

    suffix = ".bin"

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.dir = Path(directory)
        self.max_bytes = int(max_bytes)
        self.stats = CacheStats()
        self.dir.mkdir(parents=True, exist_ok=True)

    # -- paths and locking
    def path_for(self, key: str) -> Path:
        return self.dir / key[:2] / (key + self.suffix)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.dir / ".lock", "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    # -- raw bytes
    def _read(self, key: str) -> bytes | None:
        path = self.path_for(key)
        try:
            data = path.read_bytes()
        except OSError:  # missing, or unreadable: either way a miss, never a failed job
            return None
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)  # LRU: a hit makes the entry young again
        return data

    def _write(self, key: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return  # would evict everything else and then itself
        path = self.path_for(key)
        tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(data)
            with self._locked():
                os.replace(tmp, path)
                self.stats.puts += 1
                self._evict_locked()
        except OSError:
            # A cache write that fails (disk full, read-only dir) must not fail the job.
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _discard(self, key: str) -> None:
        self.stats.corrupt += 1
        with contextlib.suppress(FileNotFoundError):
            self.path_for(key).unlink()

    # -- size and eviction
    def _entries(self) -> list[tuple[float, int, Path]]:
        out = []
        now = time.time()
        for shard in os.scandir(self.dir):
            if not shard.is_dir():
                continue
            try:
                children = list(os.scandir(shard.path))
            except FileNotFoundError:  # removed by someone clearing the cache by hand
                continue
            for e in children:
                try:
                    st = e.stat()
                except FileNotFoundError:
                    continue
                if e.name.endswith(".tmp"):
                    if now - st.st_mtime > _STALE_TMP_S:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(e.path)
                    continue
                if e.name.endswith(self.suffix):
                    out.append((st.st_mtime, st.st_size, Path(e.path)))
        return out

    def total_bytes(self) -> int:
        return sum(size for _, size, _ in self._entries())

    def __len__(self) -> int:
        return len(self._entries())

    def _evict_locked(self) -> None:
        entries = self._entries()
        total = sum(s for _, s, _ in entries)
        if total <= self.max_bytes:
            return
        for _, size, path in sorted(entries, key=lambda e: e[0]):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                self.stats.evicted += 1
            total -= size
            if total <= self.max_bytes:
                break

    def evict(self) -> None:
        """Shrink the cache to its bound (e.g. after lowering max_bytes)."""
        with self._locked():
            self._evict_locked()

    def clear(self) -> None:
        with self._locked():
            for _, _, path in self._entries():
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


@dataclass
class CachedActivations:
    """A cache hit: the layer-K residual at every token plus any per-token extras the
    engine stored with it (e.g. top-k next-token ids and probabilities)."""

    activations: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)


class ActivationCache(_DiskLRU):
    """Subject activations keyed by (subject identity, quantisation, layer, exact token ids).

    `get`/`put` take the identity dict from `subject_identity(info)`. A corrupt entry is
    deleted and reported as a miss. Default bound 4 GiB (env NLA_TUI_CACHE_MAX_BYTES).
    """

    suffix = ".safetensors"

    def __init__(self, root: str | os.PathLike | None = None, max_bytes: int | str | None = None):
        root = Path(root) if root is not None else default_cache_root()
        bound = (parse_size(max_bytes) if max_bytes is not None
                 else _env_size("NLA_TUI_CACHE_MAX_BYTES", DEFAULT_ACTIVATION_BYTES))
        super().__init__(root / "activations" / f"v{LAYOUT_VERSION}", bound)

    @staticmethod
    def key(identity: dict[str, Any], token_ids: list[int] | np.ndarray) -> str:
        ids = [int(t) for t in token_ids]
        return _key({"v": LAYOUT_VERSION, "id": identity, "tokens": ids})

    def get(self, identity: dict[str, Any], token_ids: list[int] | np.ndarray) -> CachedActivations | None:
        key = self.key(identity, token_ids)
        data = self._read(key)
        if data is None:
            self.stats.misses += 1
            return None
        try:
            tensors = st_load(data)
            meta = _safetensors_metadata(data)
            if meta.get("sha256") != _tensors_digest(tensors):
                raise ValueError("checksum mismatch")
            acts = tensors.pop("activations")
            if acts.dtype != np.float32 or acts.ndim != 2 or acts.shape[0] != len(token_ids):
                raise ValueError(f"bad activations shape {acts.shape}")
            ids = tensors.pop("token_ids")
            if ids.tolist() != [int(t) for t in token_ids]:
                raise ValueError("token ids differ (hash collision or tampering)")
        except Exception:  # any decoding failure means a broken entry: recompute it
            self._discard(key)
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        return CachedActivations(acts, tensors)

    def put(self, identity: dict[str, Any], token_ids: list[int] | np.ndarray,
            activations: np.ndarray, extras: dict[str, np.ndarray] | None = None) -> None:
        acts = np.ascontiguousarray(activations, dtype=np.float32)
        if acts.ndim != 2 or acts.shape[0] != len(token_ids):
            raise ValueError(f"activations {acts.shape} do not match {len(token_ids)} tokens")
        tensors = {"activations": acts, "token_ids": np.asarray(token_ids, dtype=np.int64)}
        for name, arr in (extras or {}).items():
            if name in tensors:
                raise ValueError(f"extra tensor name {name!r} is reserved")
            tensors[name] = np.ascontiguousarray(arr)
        meta = {"sha256": _tensors_digest(tensors), "layout": str(LAYOUT_VERSION),
                "identity": json.dumps(identity, sort_keys=True)}
        self._write(self.key(identity, token_ids), st_save(tensors, metadata=meta))


def _tensors_digest(tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    return header.get("__metadata__", {}) or {}


def normalize_sampling(s: Sampling) -> Sampling:
    """Greedy decoding ignores seed and top_p: key them away so greedy always hits."""
    if s.temperature == 0:
        return Sampling(temperature=0.0, max_new_tokens=s.max_new_tokens, seed=0, top_p=1.0)
    return s


class ExplanationCache(_DiskLRU):
    """AV explanations keyed by (AV/AR identity, activation digest, prompt, sampling incl. seed).

    `get` returns a copy with `index` set to the caller's token index, since the same
    vector may sit at different positions. Default bound 64 MiB.
    """

    suffix = ".json"

    def __init__(self, root: str | os.PathLike | None = None, max_bytes: int | str | None = None):
        root = Path(root) if root is not None else default_cache_root()
        bound = parse_size(max_bytes) if max_bytes is not None else DEFAULT_EXPLANATION_BYTES
        super().__init__(root / "explanations" / f"v{LAYOUT_VERSION}", bound)

    @staticmethod
    def key(identity: dict[str, Any], vec: np.ndarray, prompt: str | None, sampling: Sampling) -> str:
        return _key({"v": LAYOUT_VERSION, "id": identity, "act": activation_digest(vec),
                     "prompt": prompt, "sampling": normalize_sampling(sampling).to_json()})

    def get(self, identity: dict[str, Any], vec: np.ndarray, prompt: str | None,
            sampling: Sampling, index: int) -> Explanation | None:
        key = self.key(identity, vec, prompt, sampling)
        data = self._read(key)
        if data is None:
            self.stats.misses += 1
            return None
        try:
            wrapper = json.loads(data)
            body = json.dumps(wrapper["explanation"], sort_keys=True)
            if hashlib.sha256(body.encode()).hexdigest() != wrapper["sha256"]:
                raise ValueError("checksum mismatch")
            exp = Explanation.from_json(wrapper["explanation"])
        except Exception:
            self._discard(key)
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        exp.index = int(index)
        exp.sampling = sampling  # report what the caller asked for (seed of a greedy hit)
        return exp

    def put(self, identity: dict[str, Any], vec: np.ndarray, prompt: str | None,
            sampling: Sampling, explanation: Explanation) -> None:
        body = explanation.to_json()
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        data = json.dumps({"sha256": digest, "explanation": body}).encode()
        self._write(self.key(identity, vec, prompt, sampling), data)
