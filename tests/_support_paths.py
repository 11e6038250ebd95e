"""Where the tests find the repository and their recorded data, whatever tier they sit in
(tests/unit, tests/integration, tests/ui all read the one tests/data)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
