"""The token strip: every token of the conversation, coloured, with a cursor.

Line API (toolong's pattern): a ScrollView whose render_line draws one row on
demand, so only visible rows cost anything and thousands of tokens stay
instant. Cursor moves refresh two rows and never relayout.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Callable

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from textual import events
from ..keys import bindings_for
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from ...core.types import NOISY_PREFIX
from ..state import SPECIAL_ROLES, UiState
from .colors import ROLE_COLORS, fidelity_q, norm_q, token_style
from .strip_layout import GUTTER, Layout, Row, layout_pending, layout_tokens

_GUTTER_BAR = Style(color="#555555")
_UNDERLINE = Style(underline=True)  # a token under a note
# A token the shown branch's edit changed (the diff against its parent): bold bright cyan
# text, a colour no heat-map background uses, so the score's colour stays readable.
_CHANGED = Style(color="#5fffff", bold=True)


class TokenStrip(ScrollView, can_focus=True):
    """Keyboard-driven view of all tokens; calls `on_cursor` when the cursor moves."""

    BINDINGS = bindings_for("strip")  # the one keymap: ui/keys.py

    def __init__(self, state: UiState, **kwargs) -> None:
        super().__init__(**kwargs)
        self.state = state
        self.cursor = -1
        self.show_special = True
        self.follow = True  # cursor tracks the end while a reply streams in
        self._layout = Layout([], [], [], 0)
        self._pending: list[Row] = []
        self._norm_scale = 1.0
        self._norm_lo = 0.0
        # Set by the app: where an unbound printable key goes while there is no token
        # yet (the start of a message, not a command). Bound keys keep their meaning
        # (o opens a transcript); the app focuses the message box while empty anyway.
        # A call, not a message: the key's character must reach the box before the next
        # key, which the box (focused by this call) receives directly.
        self.type_target: Callable[[str], None] | None = None
        # Set by the app: told of every cursor move, synchronously.
        self.on_cursor: Callable[[int], None] | None = None
        self.hits: set[int] = set()  # tokens inside a search match (finding.py)
        self.noted: set[int] = set()  # tokens under a note: underlined
        self.changed: frozenset[int] = frozenset()  # tokens the shown branch's edit changed
        self.role_filter: str | None = None  # show only this role's tokens

    def on_key(self, event: events.Key) -> None:
        if self.state.tokens or self.type_target is None:
            return
        if event.is_printable and event.character and event.key not in self.screen.active_bindings:
            event.stop()
            event.prevent_default()
            self.type_target(event.character)

    # ------------------------------------------------------------ data

    @property
    def all_rows(self) -> list[Row]:
        return self._layout.rows + self._pending

    @property
    def shown_indices(self) -> list[int]:
        """Token indices the strip shows, in order (specials may be hidden)."""
        return self._layout.visible

    def _width(self) -> int:
        return max(10, self.scrollable_content_region.width or self.size.width or 80)

    def refresh_tokens(self) -> None:
        """Tokens changed (chat turn, special toggle, resize): relayout everything."""
        st = self.state
        self._layout = layout_tokens(st.tokens, self._width(), self.show_special, st.turn_of_role,
                                     self.role_filter)
        # Colour norms between the 5th and 95th percentile of ordinary tokens, so
        # outliers (<bos> is often 10-100x) don't wash everything else out.
        norms = sorted(t.norm for i, t in enumerate(st.tokens)
                       if t.role not in SPECIAL_ROLES and not st.is_outlier(i))
        if norms:
            self._norm_lo = norms[int(0.05 * (len(norms) - 1))]
            self._norm_scale = max(1e-6, norms[int(0.95 * (len(norms) - 1))] - self._norm_lo)
        vis = self._layout.visible
        if vis:
            if self.follow or self.cursor < 0:
                self.cursor = vis[-1]
            elif self._layout.row_of[min(self.cursor, len(self._layout.row_of) - 1)] < 0 or \
                    self.cursor >= len(st.tokens):
                self.cursor = self._nearest_visible(self.cursor)
        else:
            self.cursor = -1
        self._relayout_pending()

    def refresh_pending(self) -> None:
        """The streaming reply grew: only the tail rows change."""
        self._relayout_pending()

    def _relayout_pending(self) -> None:
        st = self.state
        rows = self._layout.rows
        if st.reply is None:
            self._pending = []
        else:
            cont = bool(rows) and rows[-1].role == "model" and rows[-1].turn == len(st.messages)
            self._pending = layout_pending(st.reply, self._width(), cont)
        self.virtual_size = Size(self._width(), len(self.all_rows))
        self.refresh()
        if self.follow:
            self.scroll_end(animate=False, immediate=True, x_axis=False)
        else:
            self._scroll_to_cursor()

    def set_hits(self, hits: set[int]) -> None:
        """Highlight search matches (repaints the visible rows only: no layout)."""
        self.hits = hits
        self.refresh()

    def set_noted(self, noted: set[int]) -> None:
        """Underline the tokens notes cover (repaints the visible rows only)."""
        if noted != self.noted:
            self.noted = noted
            self.refresh()

    def set_changed(self, changed: frozenset[int]) -> None:
        """Mark the tokens the shown branch's edit changed (repaints the visible rows only)."""
        if changed != self.changed:
            self.changed = changed
            self.refresh()

    def row_of(self, index: int) -> int:
        row_of = self._layout.row_of
        return row_of[index] if 0 <= index < len(row_of) else -1

    def refresh_index(self, index: int) -> None:
        """An explanation arrived for `index`: repaint just its row."""
        if 0 <= index < len(self._layout.row_of) and self._layout.row_of[index] >= 0:
            self.refresh_line(self._layout.row_of[index])

    # ------------------------------------------------------------ render

    def _style(self, index: int) -> Style:
        st = self.state
        tok = st.tokens[index]
        best = st.best(index)
        noisy = index < NOISY_PREFIX or st.is_outlier(index)
        special = tok.role in SPECIAL_ROLES
        if best is not None and best.score is not None:
            kind, q = "fid", fidelity_q(best.score)
        else:
            kind, q = "norm", norm_q(tok.norm - self._norm_lo, self._norm_scale)
        style = token_style(kind, q, index % 2 == 1, index == self.cursor, noisy, special, index in self.hits)
        if index in self.changed and index != self.cursor and index not in self.hits:
            style += _CHANGED
        return style + _UNDERLINE if index in self.noted else style

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        r = y + scroll_y
        width = self.size.width
        rows = self.all_rows
        if r >= len(rows):
            return Strip.blank(width, self.rich_style)
        row = rows[r]
        role_style = Style(color=ROLE_COLORS.get(row.role, "#aaaaaa"), bold=True)
        segs = [Segment(row.tag[: GUTTER - 1].ljust(GUTTER - 1), role_style),
                Segment("│", _GUTTER_BAR)]
        if row.pending is not None:
            segs.append(Segment(row.pending, token_style("pending", 0, False, False, False, False)))
        else:
            segs.extend(Segment(c.text, self._style(c.index)) for c in row.cells)
        strip = Strip(segs).crop(scroll_x, scroll_x + width)
        return strip.extend_cell_length(width, self.rich_style)

    # ------------------------------------------------------------ cursor

    def _nearest_visible(self, index: int) -> int:
        vis = self._layout.visible
        if not vis:
            return -1
        k = min(bisect_left(vis, index), len(vis) - 1)
        return vis[k]

    def _pos(self) -> int:
        vis = self._layout.visible
        k = bisect_left(vis, self.cursor)
        return min(k, len(vis) - 1)

    def set_cursor(self, index: int, *, user: bool = True) -> None:
        vis = self._layout.visible
        if not vis:
            return
        index = self._nearest_visible(index)
        if user:
            # End (or walking onto the last token) re-attaches to a streaming reply
            self.follow = index == vis[-1]
        old = self.cursor
        if index == old:
            return
        self.cursor = index
        row_of = self._layout.row_of
        if 0 <= old < len(row_of) and row_of[old] >= 0:
            self.refresh_line(row_of[old])
        self.refresh_line(row_of[index])
        self._scroll_to_cursor()
        if self.on_cursor is not None:
            # Called now, not posted as a message: the pane and overview then repaint in
            # the same screen update as these two rows (a message cost a second full pass).
            self.on_cursor(index)

    def _scroll_to_cursor(self) -> None:
        if self.cursor < 0 or self.cursor >= len(self._layout.row_of):
            return
        row = self._layout.row_of[self.cursor]
        top, height = int(self.scroll_offset.y), max(1, self.scrollable_content_region.height)
        if row < top:
            self.scroll_to(y=row, animate=False, immediate=True)
        elif row >= top + height:
            self.scroll_to(y=row - height + 1, animate=False, immediate=True)

    def action_move(self, delta: int) -> None:
        vis = self._layout.visible
        if vis:
            self.set_cursor(vis[max(0, min(len(vis) - 1, self._pos() + delta))])

    def _word_start(self, k: int) -> bool:
        vis, toks = self._layout.visible, self.state.tokens
        if k == 0:
            return True
        cur, prev = toks[vis[k]], toks[vis[k - 1]]
        return (cur.turn != prev.turn or cur.text[:1].isspace() or prev.text.endswith("\n")
                or (cur.text[:1].isalnum() != prev.text[-1:].isalnum()))

    def action_word(self, direction: int) -> None:
        vis = self._layout.visible
        if not vis:
            return
        k = self._pos() + direction
        while 0 < k < len(vis) - 1 and not self._word_start(k):
            k += direction
        self.set_cursor(vis[max(0, min(len(vis) - 1, k))])

    def action_edge(self, end: int) -> None:
        vis = self._layout.visible
        if vis:
            self.set_cursor(vis[-1] if end else vis[0])

    def action_turn(self, direction: int) -> None:
        vis, toks = self._layout.visible, self.state.tokens
        if not vis:
            return
        k = self._pos()
        turn = toks[vis[k]].turn
        if direction > 0:
            while k < len(vis) - 1 and toks[vis[k]].turn == turn:
                k += 1
        else:
            start = k
            while k > 0 and toks[vis[k - 1]].turn == turn:
                k -= 1
            if k == start and k > 0:  # already at the turn's start: previous turn
                turn = toks[vis[k - 1]].turn
                k -= 1
                while k > 0 and toks[vis[k - 1]].turn == turn:
                    k -= 1
        self.set_cursor(vis[k])

    def action_line(self, direction: int) -> None:
        """Up/down: the token at the same column on the neighbouring row."""
        lay = self._layout
        if self.cursor < 0:
            return
        cur_row = lay.row_of[self.cursor]
        x = next((c.x for c in lay.rows[cur_row].cells if c.index == self.cursor), 0)
        r = cur_row + direction
        while 0 <= r < len(lay.rows) and not lay.rows[r].cells:
            r += direction
        if not 0 <= r < len(lay.rows):
            return
        cells = lay.rows[r].cells
        best = min(cells, key=lambda c: abs(c.x - x))
        self.set_cursor(best.index)

    def on_click(self, event) -> None:
        at = event.get_content_offset(self)  # None on the border / scrollbar
        if at is None:
            return
        row = at.y + int(self.scroll_offset.y)
        rows = self._layout.rows
        if not 0 <= row < len(rows) or not rows[row].cells:
            return
        x = at.x + int(self.scroll_offset.x) - GUTTER
        cells = rows[row].cells
        hit = next((c for c in cells if c.x <= x < c.x + cell_len(c.text)), None)
        self.set_cursor((hit or (cells[0] if x < 0 else cells[-1])).index)

    def on_resize(self) -> None:
        self.refresh_tokens()
