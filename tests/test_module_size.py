"""The house rule that keeps each room readable: no Python module over 400 lines
(split by responsibility instead; docs/ARCHITECTURE.md says where things go)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIMIT = 400


def test_every_module_is_at_most_400_lines():
    too_long = {}
    for top in ("nla_tui", "training", "scripts", "tests"):
        for path in sorted((REPO / top).rglob("*.py")):
            n = len(path.read_text(encoding="utf-8").splitlines())
            if n > LIMIT:
                too_long[str(path.relative_to(REPO))] = n
    assert too_long == {}
