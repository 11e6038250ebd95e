"""Explain-all progress counted per finished row, with its rate and time left.

An AV batch (16 rows on CPU, up to 160 on a GPU) takes from seconds to minutes; counted
per batch, progress sits at 0 and then jumps. The AV reports each row as it closes its
explanation (Verbalizer.counting_rows); rows that run to max_new_tokens, and cached
rows, are counted when their batch is handed back. The TUI's worker and `nla-tui run`
both count with this, so they show the same numbers.
"""

from __future__ import annotations

import time
from typing import Callable


class RowProgress:
    def __init__(self, total: int, already: int = 0, report: Callable[["RowProgress"], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.already = total, already  # already: cached before this run started
        self._committed, self._in_batch, self._shown = already, 0, already
        self._report, self._clock = report or (lambda p: None), clock
        self.start = clock()

    @property
    def done(self) -> int:
        return self._shown

    def row_done(self, row: int | None = None) -> None:
        """One row of the running AV batch finished (which one does not matter here)."""
        self._in_batch += 1
        self._update()

    def batch_done(self, rows: int) -> None:
        """A batch of `rows` explanations was handed back (finished, scored or cached)."""
        self._committed += rows
        self._in_batch = 0
        self._update()

    def _update(self) -> None:
        # Never backwards: with the subject parked, every AV pass runs before any row is
        # scored and handed back, so the handed-back count catches up with the closed rows.
        self._shown = min(self.total, max(self._shown, self._committed + self._in_batch))
        self._report(self)

    @property
    def rate(self) -> float | None:
        """Rows per second over the rows this run explained (cached ones excluded)."""
        fresh = self._shown - self.already
        elapsed = self._clock() - self.start
        return fresh / elapsed if fresh > 0 and elapsed > 0 else None

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the rate so far: known from the first finished row on."""
        rate = self.rate
        return (self.total - self._shown) / rate if rate else None
