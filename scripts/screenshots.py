"""Write SVG screenshots of the real app (headless) to screenshots/.

    python scripts/screenshots.py [NAME ...]

The app runs over a replay of tests/data/recorded_session (recorded once from
the real demo engine), driven by the same scenarios the snapshot tests use.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from tests._support_ui import SCENARIOS, replay_app  # noqa: E402

OUT = ROOT / "screenshots"


async def shoot(name: str) -> Path:
    kwargs, size, run_before = SCENARIOS[name]
    app = replay_app(**kwargs)
    async with app.run_test(size=size) as pilot:
        await run_before(pilot)
        await pilot.pause()
        path = OUT / f"{name}.svg"
        tmp = path.with_suffix(".svg.tmp")
        tmp.write_text(app.export_screenshot(title=f"nla-tui — {name}"), encoding="utf-8")
        tmp.replace(path)
    return path


def main(argv: list[str]) -> int:
    names = argv or sorted(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"unknown screen(s) {', '.join(unknown)}; choose from {', '.join(sorted(SCENARIOS))}")
        return 2
    OUT.mkdir(exist_ok=True)
    for name in names:
        print(asyncio.run(shoot(name)).relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
