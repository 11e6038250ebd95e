"""Screenshots of a sweep for the README: the report (PNG, headless Chromium) and the
corpus screen (SVG, Textual's own screenshot, over the recorded replay app).

    python scripts/corpus_screenshots.py SWEEP_DIR [QUERY]

SWEEP_DIR is a real `nla-tui sweep` output (the README's were made from the demo pair).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from tests._support_session import chromium_binary, chromium_flags  # noqa: E402
from tests._support_ui import replay_app  # noqa: E402

OUT = ROOT / "screenshots"


def report_png(sweep: Path) -> Path:
    from nla_tui.core.corpus.report import write_report

    page = write_report(sweep)
    png = OUT / "corpus_report.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium_binary(), *chromium_flags(profile), "--hide-scrollbars", "--window-size=1280,1500",
                        f"--screenshot={png}", page.resolve().as_uri()], check=True, capture_output=True, timeout=120)
    return png


async def corpus_svg(sweep: Path, query: str) -> Path:
    from nla_tui.ui.screens.corpus import CorpusScreen

    app = replay_app(preload=True)
    async with app.run_test(size=(140, 36)) as pilot:
        app.push_screen(CorpusScreen(sweep, query))
        await pilot.pause(0.3)
        path = OUT / "corpus_140x36.svg"
        path.write_text(app.export_screenshot(title="nla-tui — corpus"), encoding="utf-8")
    return path


if __name__ == "__main__":
    sweep = Path(sys.argv[1])
    print(report_png(sweep).relative_to(ROOT))
    print(asyncio.run(corpus_svg(sweep, sys.argv[2] if len(sys.argv) > 2 else "")).relative_to(ROOT))
