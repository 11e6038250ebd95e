"""The UI must not pull torch/transformers: it draws while the worker loads them."""

import subprocess
import sys


def test_ui_app_imports_no_torch():
    code = (
        "import sys; import nla_tui.ui.app, nla_tui.core.runtime.replay, nla_tui.cli.open; "
        "bad = [m for m in ('torch', 'transformers', 'bitsandbytes', 'accelerate') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, f"nla_tui.ui imported {r.stdout.strip()} {r.stderr[-2000:]}"


def test_ui_never_reads_torch_through_sys_modules():
    """GPU memory arrives in a GpuMemory event from the worker; no UI module peeks at
    an already imported torch (which would read it from the UI thread)."""
    from pathlib import Path

    ui = Path(__file__).resolve().parents[1] / "nla_tui" / "ui"
    peeking = [p.name for p in ui.rglob("*.py") if "sys.modules" in p.read_text(encoding="utf-8")]
    assert peeking == []
