"""The UI must not pull torch/transformers: it draws while the worker loads them."""

import subprocess
import sys
from tests._support_paths import REPO


def test_ui_app_imports_no_torch():
    code = (
        "import sys; import nla_tui.ui.app, nla_tui.core.runtime.replay, nla_tui.cli.open; "
        "bad = [m for m in ('torch', 'transformers', 'bitsandbytes', 'accelerate') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, f"nla_tui.ui imported {r.stdout.strip()} {r.stderr[-2000:]}"


_TORCH_SPY = r"""
import asyncio, sys, types

touched = []


class Spy(types.ModuleType):  # stands in for an already imported torch
    def __getattr__(self, name):
        touched.append(name)
        raise AttributeError(name)


sys.modules["torch"] = Spy("torch")
sys.path.insert(0, sys.argv[1])
from tests._support_ui import replay_app, settle_replay


async def main():
    app = replay_app(preload=True)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle_replay(pilot, app)
        await pilot.press("right", "right", "e", "a", "question_mark", "escape")
        await settle_replay(pilot, app)
        await pilot.pause(0.3)


asyncio.run(main())
print("TOUCHED", touched)
"""


def test_ui_never_reads_torch_through_sys_modules():
    """GPU memory arrives in a GpuMemory event from the worker; no UI code peeks at an
    already imported torch (it would read it from the UI thread). A spy stands in for
    torch in sys.modules while the app runs its keys: nothing may touch it."""
    repo = str(REPO)
    r = subprocess.run([sys.executable, "-c", _TORCH_SPY, repo], capture_output=True, text=True, cwd=repo,
                       timeout=300)
    assert "TOUCHED []" in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]
