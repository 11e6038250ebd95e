"""How the sweep groups shards into waves (one engine call, one parking each) and which
positions --dry-run times: pure arithmetic over the plan's row counts."""

from __future__ import annotations

from types import SimpleNamespace

from nla_tui.cli.sweep import first_positions
from nla_tui.core.corpus.sweep import waves


def test_waves_hold_at_least_the_asked_positions_and_keep_shard_order():
    targets = [3, 3, 1, 5, 2, 2]
    assert waves([0, 1, 2, 3, 4, 5], targets, 4) == [[0, 1], [2, 3], [4, 5]]
    assert waves([0, 1, 2, 3, 4, 5], targets, 1) == [[k] for k in range(6)]  # CPU: a shard at a time
    assert waves([1, 3, 5], targets, 100) == [[1, 3, 5]]  # resumed: only the shards left, one short wave
    assert waves([], targets, 4) == []


def test_dry_run_times_the_first_positions_across_shards():
    plan = SimpleNamespace(shard_rows=[0, 3, 2, 7])
    assert first_positions(plan, 4) == [(1, 3), (2, 1)]  # the empty shard skipped, the second cut
    assert first_positions(plan, 160) == [(1, 3), (2, 2), (3, 7)]  # fewer positions than asked: all
