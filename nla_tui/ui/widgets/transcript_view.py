"""The chat transcript as one Line-API widget: a key costs the same with 5 messages or 500.

One Static per message made every layout of the screen walk every message (and Pilot's
idle wait queue a callback on each): ~280 ms per key at ~300 messages. Here the whole
transcript is one ScrollView. Each message is wrapped once per width (plain Rich
`Text.wrap`), a prefix sum maps a row to its message, and `render_line` draws only the
rows on screen. A streaming reply re-wraps only the last message. The scrollbar's
column is always reserved (overflow-y: scroll), so the wrap width never changes as the
transcript grows and a new message never lays out the screen.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

from rich.console import Console
from rich.style import Style
from rich.text import Text
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from ...terminal_text import visible
from .colors import ROLE_COLORS
from .textual_private import update_scroll

ROLE_NAMES = {"user": "you", "assistant": "model", "system": "system", "tool": "tool"}
_LABEL_COLOR = {"user": ROLE_COLORS["user"], "assistant": ROLE_COLORS["model"],
                "system": ROLE_COLORS["system"], "tool": ROLE_COLORS["tool_result"]}
_BODY = {"assistant": Style(color="#b8b8b8"), "system": Style(color="#c9a3d9"), "tool": Style(color="#9fb89a")}
_CURSOR = Style(blink=True)
_console = Console(width=200, color_system="truecolor", legacy_windows=False, markup=False)


@dataclass
class Entry:
    role: str
    text: str
    streaming: bool = False


class TranscriptView(ScrollView, can_focus=False):
    DEFAULT_CSS = """
    TranscriptView { overflow-x: hidden; overflow-y: scroll; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.entries: list[Entry] = []
        self.gap = 1  # blank rows after each message (0 in the folded 80-column layout)
        self._lines: list[list[Text]] = []  # wrapped rows of each message
        self._starts: list[int] = []  # first row of each message
        self._width = -1

    # ------------------------------------------------------------ content

    def set_entries(self, entries: list[Entry]) -> None:
        self.entries = list(entries)
        self._lines = [self._wrap(e) for e in self.entries] if self._width > 0 else []
        self._reindex(0)
        self.scroll_end(animate=False, immediate=True, x_axis=False)
        self.refresh()

    def append(self, entry: Entry) -> None:
        at_end = self._at_end()
        self.entries.append(entry)
        if self._width > 0:
            self._lines.append(self._wrap(entry))
        self._reindex(len(self.entries) - 1)
        self._after_change(at_end)

    def update_last(self, text: str | None = None, streaming: bool | None = None) -> None:
        """The streaming reply grew (or finished): re-wrap the last message only."""
        if not self.entries:
            return
        at_end = self._at_end()
        e = self.entries[-1]
        if text is not None:
            e.text = text
        if streaming is not None:
            e.streaming = streaming
        if self._width > 0:
            self._lines[-1] = self._wrap(e)
        self._reindex(len(self.entries) - 1)
        self._after_change(at_end)

    def _at_end(self) -> bool:
        return self.scroll_offset.y >= self.max_scroll_y - 1

    def _after_change(self, at_end: bool) -> None:
        if at_end:
            self.scroll_end(animate=False, immediate=True, x_axis=False)
        self.refresh()

    # ------------------------------------------------------------ wrapping

    def _wrap(self, e: Entry) -> list[Text]:
        t = Text(no_wrap=False, end="")
        t.append(f"{visible(ROLE_NAMES.get(e.role, e.role))}: ",
                 style=Style(bold=True, color=_LABEL_COLOR.get(e.role)))
        t.append(visible(e.text), style=_BODY.get(e.role))  # a transcript's ANSI codes never reach the terminal
        if e.streaming:
            t.append("▌", style=_CURSOR)
        rows = list(t.wrap(_console, max(1, self._width)))
        return rows + [Text("")] * self.gap

    def _reindex(self, first: int) -> None:
        """Row starts from message `first` on, and the virtual size (no layout)."""
        if self._width <= 0:
            return
        del self._starts[first:]
        row = self._starts[-1] + len(self._lines[first - 1]) if first > 0 else 0
        for lines in self._lines[first:]:
            self._starts.append(row)
            row += len(lines)
        size = Size(self._width, row)
        if size != self.virtual_size:
            self.set_reactive(ScrollView.virtual_size, size)
            update_scroll(self, size)

    def _rewrap(self) -> None:
        width = self.scrollable_content_region.width
        if width <= 0 or width == self._width:
            return
        self._width = width
        self._lines = [self._wrap(e) for e in self.entries]
        self._reindex(0)

    def set_gap(self, gap: int) -> None:
        if gap != self.gap:
            self.gap = gap
            self._width = -1
            self._rewrap()
            self.refresh()

    def on_resize(self) -> None:
        at_end = self._at_end()
        self._rewrap()
        if at_end:
            self.scroll_end(animate=False, immediate=True, x_axis=False)

    @property
    def row_count(self) -> int:
        return self._starts[-1] + len(self._lines[-1]) if self._starts else 0

    def row_text(self, row: int) -> str:
        """The plain text of one transcript row (tests read the transcript this way)."""
        i = bisect_right(self._starts, row) - 1
        return self._lines[i][row - self._starts[i]].plain if i >= 0 else ""

    # ------------------------------------------------------------ drawing

    def render_line(self, y: int) -> Strip:
        if self.scrollable_content_region.width != self._width:
            self._rewrap()
        width = self.scrollable_content_region.width
        r = y + int(self.scroll_offset.y)
        if not self._starts or r >= self.row_count:
            return Strip.blank(width, self.rich_style)
        i = bisect_right(self._starts, r) - 1
        line = self._lines[i][r - self._starts[i]]
        strip = Strip(list(line.render(_console))).apply_style(self.rich_style)
        return strip.crop(0, width).extend_cell_length(width, self.rich_style)
