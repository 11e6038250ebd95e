"""A one-line overview of the whole conversation under the token strip.

Each cell is a slice of the tokens the strip shows, coloured by the slice's worst
fidelity (once any token in it is explained), else by its highest activation norm, or
(`g` cycles) by its largest surprise. The cursor's cell is white; a cell holding a
search match shows a dot. Click a cell, or press < / >, to jump there.
Colours are computed when tokens, explanations or the mode change, not per key: a
cursor move repaints this one line.
"""

from __future__ import annotations

from rich.segment import Segment
from rich.style import Style
from textual.message import Message
from textual.strip import Strip
from textual.widget import Widget

from ..finding import surprise
from ..state import SPECIAL_ROLES, UiState
from .colors import fidelity_q, norm_q, token_style

MODES = ("auto", "norm", "surprise")  # auto: fidelity where explained, else norm
_CURSOR = Style(color="#000000", bgcolor="#f0f0f0", bold=True)
_LABEL = Style(color="#888888")


class Minimap(Widget, can_focus=False):
    DEFAULT_CSS = "Minimap { height: 1; }"

    class Jump(Message):
        def __init__(self, index: int) -> None:
            super().__init__()
            self.index = index

    def __init__(self, state: UiState, **kwargs) -> None:
        super().__init__(**kwargs)
        self.state = state
        self.mode = "auto"
        self.indices: list[int] = []
        self.cursor = -1
        self.hits: set[int] = set()
        self._cells: list[Style] = []
        self._marks: list[bool] = []
        self._width = -1

    @property
    def label(self) -> str:
        return {"auto": "map ", "norm": "norm ", "surprise": "surp "}[self.mode]

    def _cells_width(self) -> int:
        return max(1, self.size.width - len(self.label))

    def update_map(self, indices: list[int] | None = None, hits: set[int] | None = None) -> None:
        """Tokens, explanations, hits or mode changed: recolour every cell."""
        if indices is not None:
            self.indices = list(indices)
        if hits is not None:
            self.hits = hits
        self._width = -1
        self.refresh()

    def set_cursor(self, index: int) -> None:
        if index == self.cursor:
            return
        old, self.cursor = self.cursor, index
        # Repaint only when the ▼ changes cell: a repaint of this bottom row widens the
        # screen's update region to every row between it and the strip (bench ui).
        if self._width < 0 or old < 0 or index < 0 or self.bucket_of(old) != self.bucket_of(index):
            self.refresh()

    def bucket_of(self, index: int) -> int:
        n, w = len(self.indices), self._cells_width()
        if not n:
            return -1
        from bisect import bisect_left

        k = min(bisect_left(self.indices, index), n - 1)
        return min(w - 1, k * w // n)

    def index_at(self, cell: int) -> int | None:
        n, w = len(self.indices), self._cells_width()
        if not n or not 0 <= cell < w:
            return None
        return self.indices[min(n - 1, -(-cell * n // w))]

    def _compute(self) -> None:
        st, w, n = self.state, self._cells_width(), len(self.indices)
        self._width = w
        self._cells, self._marks = [], []
        if not n:
            return
        norms = sorted(st.tokens[i].norm for i in self.indices if st.tokens[i].role not in SPECIAL_ROLES
                       and not st.is_outlier(i)) or [0.0]
        lo, hi = norms[int(0.05 * (len(norms) - 1))], norms[int(0.95 * (len(norms) - 1))]
        sur = surprise(st.tokens) if self.mode == "surprise" else []
        s_hi = max((x for x in sur if x is not None), default=1.0) or 1.0
        for c in range(w):
            # Cell c holds the tokens k with k * w // n == c (as bucket_of); when there are
            # fewer tokens than cells, an empty cell shows its nearest token.
            a = min(n - 1, -(-c * n // w))
            b = max(a + 1, -(-(c + 1) * n // w))
            idx = [i for i in self.indices[a:b] if st.tokens[i].role not in SPECIAL_ROLES] or self.indices[a:b]
            scores = [e.score for i in idx if (e := st.best(i)) is not None and e.score is not None]
            if self.mode == "auto" and scores:
                style = token_style("fid", min(fidelity_q(s) for s in scores), False, False, False, False)
            elif self.mode == "surprise":
                v = max((sur[i] for i in idx if sur[i] is not None), default=0.0)
                style = token_style("norm", norm_q(v, s_hi), False, False, False, False)
            else:
                v = max(st.tokens[i].norm for i in idx)
                style = token_style("norm", norm_q(v - lo, max(1e-6, hi - lo)), False, False, False, False)
            self._cells.append(style)
            self._marks.append(any(i in self.hits for i in self.indices[a:b]))

    def render_line(self, y: int) -> Strip:
        if y != 0:
            return Strip.blank(self.size.width, self.rich_style)
        if self._width != self._cells_width():
            self._compute()
        here = self.bucket_of(self.cursor) if self.cursor >= 0 else -1
        segs = [Segment(self.label, _LABEL)]
        for c, style in enumerate(self._cells):
            ch = "•" if self._marks[c] else " "
            segs.append(Segment("▼" if c == here else ch, _CURSOR if c == here else style))
        return Strip(segs).extend_cell_length(self.size.width, self.rich_style)

    def on_click(self, event) -> None:
        at = event.get_content_offset(self)
        if at is None:
            return
        target = self.index_at(at.x - len(self.label))
        if target is not None:
            self.post_message(self.Jump(target))

    def on_resize(self) -> None:
        self._width = -1
