"""The two private Textual APIs the app uses, wrapped in one place with the reason.

Both exist for the key-cost budget (bench ui: a cursor move must repaint in ~20 ms on
2 cores, with a 500-message transcript on screen). Checked against Textual 8.2; if a
later Textual drops them, each falls back to the public, slower path instead of failing.
"""

from __future__ import annotations

from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.widget import Widget


def start_scrollbar(parent: Widget, bar: Widget) -> None:
    """Start a custom scrollbar widget owned by `parent`, as ScrollView does for its own
    bars (`App._start_widget`). Public mounting would make the bar a child in the DOM and
    cost a layout of the pane on every key."""
    start = getattr(parent.app, "_start_widget", None)
    if start is not None:
        start(parent, bar)


def update_scroll(view: ScrollView, size: Size) -> None:
    """Clamp the scroll offset and resize the scrollbar thumb after the virtual size was
    set without a layout (`ScrollView._scroll_update`). The public route, a layout
    refresh, re-arranges the whole screen (~4 ms of every key)."""
    update = getattr(view, "_scroll_update", None)
    if update is not None:
        update(size)
    else:
        view.refresh(layout=True)
