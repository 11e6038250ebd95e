"""SVG snapshots of the main screens, from a replay of a real recorded session.

Update after an intended change with:
    python -m pytest tests/ui/test_ui_snapshots.py --snapshot-update
and regenerate screenshots/ with scripts/screenshots.py.
"""

import pytest

from tests._support_ui import SCENARIOS, replay_app


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_screen(name, snap_compare):
    kwargs, size, run_before = SCENARIOS[name]
    assert snap_compare(replay_app(**kwargs), terminal_size=size, run_before=run_before)
