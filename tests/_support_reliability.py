"""Shared by the reliability tests (issue 10): files snapshot, CLI runner, checkpoint clones."""

from __future__ import annotations
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
import numpy as np
import pytest
import yaml
from nla_tui import cli
from tests._support_paths import REPO

INJECT = "\x1b]0;T\x07\x1b[2J\x1b]52;c;ZXZpbA==\x07\x9b31m"  # retitle, clear, OSC 52 clipboard, C1 CSI
MARKUP = "<!-- </script> <script>alert(1)</script> &amp; \u2028"


def snapshot(*roots: Path) -> dict[str, bytes]:
    """Every file under `roots` (following symlinked weights by content hash)."""
    out = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")):
            if p.is_file():
                data = p.read_bytes() if p.stat().st_size < 4 << 20 else hashlib.sha256(p.read_bytes()).digest()
                out[str(p)] = data
    return out


def main(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def no_load(monkeypatch):
    """Fail the test if any model starts loading: validation must come first."""
    from nla_tui.core.runtime.engine import Engine

    def boom(self, *a, **k):
        raise AssertionError("models were loaded before the bad argument was reported")
    monkeypatch.setattr(Engine, "load", boom)


def clone_ckpt(src: Path, dst: Path, edit=None, copy=()) -> Path:
    """A demo checkpoint copy: weights symlinked unless named in `copy`; sidecar edited."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.suffix == ".safetensors" and f.name not in copy:
            (dst / f.name).symlink_to(f)
        else:
            shutil.copy(f, dst / f.name)
    if edit:
        meta = yaml.safe_load((dst / "nla_meta.yaml").read_text())
        edit(meta)
        (dst / "nla_meta.yaml").write_text(yaml.safe_dump(meta, allow_unicode=True))
    return dst


def write_value_head(path: Path, w: np.ndarray) -> None:
    """In bf16, like the demo's head, so a rewrite keeps the file's size."""
    import torch
    from safetensors.torch import save_file

    if path.is_symlink():
        path.unlink()
    save_file({"weight": torch.from_numpy(np.asarray(w, np.float32)).to(torch.bfloat16)}, str(path))


def strict_json(text: str):
    """What a browser's JSON.parse accepts: no NaN / Infinity."""
    def bad(c):
        raise ValueError(f"non-JSON constant {c}")
    return json.loads(text, parse_constant=bad)


# ------------------------------------------------------------------ 1. nothing nla-tui did not write is deleted


# ------------------------------------------------------------------ issue 19: real processes and disk faults


def other_process(code: str) -> None:
    """Run `code` in a second Python process (the other nla-tui), to completion."""
    subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, check=True, timeout=120)


@contextlib.contextmanager
def read_only(directory: Path):
    """`directory` as a read-only filesystem: a read-only bind mount of it (real EROFS,
    even for root); without the rights to mount, its mode bits (real for non-root)."""
    view = directory.with_name(directory.name + "-ro")
    view.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(directory), str(view)], capture_output=True).returncode == 0 \
        and subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], capture_output=True).returncode == 0
    if not mounted:
        subprocess.run(["umount", str(view)], capture_output=True)
        view.rmdir()
        if os.geteuid() == 0:
            pytest.skip("cannot mount here, and root ignores read-only modes")
        os.chmod(directory, 0o555)
        view = directory
    try:
        yield view
    finally:
        if mounted:
            subprocess.run(["umount", str(view)], check=True)
            view.rmdir()
        else:
            os.chmod(directory, 0o755)


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "256k"):
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


@contextlib.contextmanager
def no_hang(seconds: int = 20):
    """A read that blocks (a FIFO) fails the test instead of hanging it."""
    def boom(*_):
        raise AssertionError(f"blocked for {seconds} s (reading a FIFO?)")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def saved(tmp_path, name="s", **kw) -> Path:
    from nla_tui.core.store.session import save_session
    from tests._support_session import make_session

    return save_session(make_session(**kw), tmp_path / name)
