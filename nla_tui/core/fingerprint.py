"""What a local checkpoint *is*, cheaply: the key the caches trust.

A checkpoint's revision must change whenever any file that shapes its output changes
— including the AR's value_head.safetensors and a weights rewrite of the same size
(both were once invisible, so a fixed value head kept serving the broken one's cached
scores). Hashing GiBs on every start is too slow, so each weight file contributes its
name, size, mtime (ns), its first MiB (the safetensors header lists every tensor and
offset) and 16 blocks of 64 KiB sampled evenly through the data plus the last block;
files up to 2 MiB (configs, sidecar, value heads of small models) are hashed whole.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

MiB = 1 << 20
_BLOCK = 64 << 10
_SAMPLES = 16
_WHOLE = 2 * MiB
# Files that decide what a checkpoint computes (weights, configs, sidecar, tokenizer).
_SUFFIXES = {".safetensors", ".gguf", ".bin", ".pt", ".json", ".yaml", ".jinja", ".model", ".txt"}


def file_digest(path: Path, h: "hashlib._Hash") -> None:
    st = path.stat()
    h.update(f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    with open(path, "rb") as fh:
        if st.st_size <= _WHOLE:
            h.update(fh.read())
            return
        h.update(fh.read(MiB))
        step = (st.st_size - MiB) // (_SAMPLES + 1)
        for k in range(1, _SAMPLES + 1):
            fh.seek(MiB + k * step)
            h.update(fh.read(_BLOCK))
        fh.seek(st.st_size - _BLOCK)
        h.update(fh.read(_BLOCK))


def checkpoint_digest(path: Path) -> str:
    """Hex digest of a checkpoint directory (or one weights file)."""
    p = Path(path)
    h = hashlib.sha256()
    files = [p] if p.is_file() else sorted(
        f for f in p.iterdir() if f.suffix in _SUFFIXES and f.is_file())
    for f in files:
        file_digest(f, h)
    return h.hexdigest()
