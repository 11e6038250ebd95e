"""C: a sweep's output (nla-tui sweep) as a searchable table. Type an FTS5 query (empty:
every row), f / s / u sort by fidelity / specificity / surprise (again: reverse is not
offered, the table lists the top), Enter opens the hit's conversation with the cursor on
its token. Reads the sweep's SQLite index only (core/corpus/index.py): no models."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Input, Static

from ...core.corpus import index
from ...core.errors import NlaError
from ...terminal_text import visible

HINT = "type to search (FTS5: words, \"phrase\", prefix*) · ↓ to the table · Enter open · f fve · s specificity · u surprise · Esc close"
SORT_NAMES = {"rank": "best match", "fve": "fidelity", "specificity": "specificity", "surprise": "surprise"}
LIMIT = 200


def _num(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


class CorpusScreen(ModalScreen["index.Hit | None"]):
    """Dismisses with the hit to open, or None."""

    DEFAULT_CSS = """
    CorpusScreen { align: center middle; }
    #corpus-box { width: 140; max-width: 99%; height: 92%; border: thick $accent; background: $surface; padding: 0 1; }
    #corpus-query { margin-bottom: 0; }
    #corpus-table { height: 1fr; }
    #corpus-status, #corpus-hint { color: $text-muted; }
    """
    AUTO_FOCUS = "#corpus-query"
    BINDINGS = [
        Binding("escape", "close", "close"),
        Binding("f", "sort('fve')", "fve", show=False),
        Binding("s", "sort('specificity')", "specificity", show=False),
        Binding("u", "sort('surprise')", "surprise", show=False),
        Binding("down", "to_table", show=False),
    ]

    def __init__(self, directory: Path, query: str = "") -> None:
        super().__init__()
        self.directory, self.search_text, self.sort = Path(directory), query, "rank"
        self.hits: list[index.Hit] = []

    def compose(self) -> ComposeResult:
        with Vertical(id="corpus-box"):
            yield Static(f"[bold]Corpus[/]  {visible(str(self.directory))}", id="corpus-title")
            yield Input(self.search_text, placeholder="search explanations and tokens, e.g. capital OR Paris*",
                        id="corpus-query")
            yield DataTable(id="corpus-table", cursor_type="row", zebra_stripes=True)
            yield Static("", id="corpus-status")
            yield Static(HINT, id="corpus-hint")

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns("conversation", "token", "role", "fve", "verdict", "spec", "surprise",
                                              "context", "explanation")
        self.reload()

    def reload(self) -> None:
        status = self.query_one("#corpus-status", Static)
        try:
            self.hits = index.search(self.directory, self.search_text, sort=self.sort, limit=LIMIT)
        except NlaError as e:
            status.update(visible(str(e), keep_layout=False))
            return
        table = self.query_one(DataTable)
        table.clear()
        for h in self.hits:
            ctx = f"{h.context_before[-18:]}[{h.token_text}]{h.context_after[:10]}"
            table.add_row(visible(h.conversation_id[-24:], keep_layout=False), str(h.token_index), h.role,
                          _num(h.fve_nrm), h.shown_verdict, _num(h.specificity), _num(h.surprise),
                          visible(ctx, keep_layout=False), visible(h.explanation[:90], keep_layout=False))
        browse = not self.search_text.strip()
        shown = "every row" if browse else repr(self.search_text)
        order = "fidelity" if browse and self.sort == "rank" else SORT_NAMES.get(self.sort, self.sort)
        status.update(visible(f"{len(self.hits)} hit(s) for {shown}, by {order}"
                              + (f" (first {LIMIT})" if len(self.hits) == LIMIT else "")
                              + (f"; {self.hits.note}" if self.hits.note else ""), keep_layout=False))

    def on_input_changed(self, event: Input.Changed) -> None:
        self.search_text = event.value
        self.reload()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_to_table()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if 0 <= event.cursor_row < len(self.hits):
            self.dismiss(self.hits[event.cursor_row])

    def action_sort(self, key: str) -> None:
        if self.focused is self.query_one(Input):
            return  # typing a query: f/s/u are letters
        self.sort = key
        self.reload()

    def action_to_table(self) -> None:
        self.query_one(DataTable).focus()

    def action_close(self) -> None:
        self.dismiss(None)
