"""Finding tokens in a long transcript (a controller of NlaApp, ui/host.py): `/` regex
search with next/previous match, jumps to the lowest-fidelity / highest-norm / most
surprising tokens, a role filter, the overview line's steps and colours, and explain-all
limited to a role, turn, span or the 200 most surprising tokens. The logic is in
finding.py (pure); this wires it to the keys the app binds.
"""

from __future__ import annotations

import re

from .host import AppHost
from .finding import (MOST_SURPRISING, ROLE_FILTERS, check_pattern, compile_pattern, next_match, ranking,
                      scope_indices, search, step)
from .screens.choice import ChoiceDialog
from .screens.dialogs import ValueDialog
from .state import Change

_JUMP_WORDS = {"fidelity": "lowest fidelity", "norm": "highest norm", "surprise": "largest surprise"}
_ROLE_WORDS = {"model": "the model's tokens", "user": "the user's tokens", "tool_call": "tool calls",
               "tool_result": "tool results", "system": "the system prompt"}


class Finder:
    def __init__(self, host: AppHost) -> None:
        self.host = host
        self.search_text = ""
        self.matches: list[tuple[int, int]] = []  # (first, last) token of each match
        self._matches_stale = False
        self._jump_at: tuple[str, int] | None = None  # (kind, index) where the last j/m/u landed

    # ------------------------------------------------------------ from the app

    def changed(self, change: Change) -> None:
        app = self.host
        if change.captured:
            if self.search_text:
                self._run_search(quiet=True)
            app.find_changed()
        elif change.explained and self.search_text:
            self._matches_stale = True  # explanation text changed: re-search on the next ] / [

    def status(self) -> str:
        """A suffix for the legend: the search and the role filter in force."""
        parts = []
        if self.search_text:
            parts.append(f"/{self.search_text}: {len(self.matches)} match{'es' if len(self.matches) != 1 else ''}")
        if self.host.strip.role_filter:
            parts.append(f"only {self.host.strip.role_filter}")
        return "  ".join(parts)

    # ------------------------------------------------------------ search

    def search(self) -> None:
        app = self.host

        def done(value: str | None) -> None:
            if value is not None:
                self.search_text = value
                self._run_search()

        # Opens empty (typing starts a new search); the last one is shown as the hint.
        hint = f"last: {self.search_text}" if self.search_text else "e.g. umbrella|rain  or  get_\\w+"
        app.push_screen(ValueDialog("Search token, explanation and note text (regex; smart case)", "",
                                    placeholder=hint, validate=check_pattern), done)

    def _run_search(self, quiet: bool = False) -> None:
        app = self.host
        strip = app.strip
        pattern: re.Pattern[str] = compile_pattern(self.search_text)
        shown = strip.shown_indices
        self.matches = search(app.state, pattern, shown)
        self._matches_stale = False
        visible = set(shown)
        strip.set_hits({i for a, b in self.matches for i in range(a, b + 1) if i in visible})
        app.find_changed()
        if quiet:
            return
        if not self.matches:
            app.notify(f"No match for /{self.search_text}.", severity="warning", timeout=3)
            return
        target = next_match(self.matches, strip.cursor - 1, 1)
        strip.set_cursor(target)
        app.notify(f"{len(self.matches)} matches for /{self.search_text} (] next, [ previous)", timeout=3)

    def match(self, direction: int) -> None:
        app = self.host
        if not self.search_text:
            app.notify("Search first: press / and type a regular expression.", severity="warning", timeout=3)
            return
        if self._matches_stale:
            self._run_search(quiet=True)
        target = next_match(self.matches, app.strip.cursor, direction)
        if target is None:
            app.notify(f"No match for /{self.search_text}.", severity="warning", timeout=3)
            return
        app.strip.set_cursor(target)

    # ------------------------------------------------------------ jumps

    def jump(self, kind: str, direction: int) -> None:
        app = self.host
        strip = app.strip
        order = ranking(app.state, kind, strip.shown_indices)
        if not order:
            why = ("no token is explained yet (e, a)" if kind == "fidelity"
                   else "no captured tokens here")
            app.notify(f"Nothing to rank by {_JUMP_WORDS[kind]}: {why}.", severity="warning", timeout=3)
            return
        # A walk starts at the top of the ranking (the bottom with shift) wherever the
        # cursor is; only a repeat of the same jump from where it landed steps along it.
        walking = self._jump_at == (kind, strip.cursor)
        target = step(order, strip.cursor if walking else -1, direction)
        self._jump_at = (kind, target)
        strip.set_cursor(target)
        app.notify(f"{_JUMP_WORDS[kind]}: {order.index(target) + 1} of {len(order)}", timeout=2)

    # ------------------------------------------------------------ role filter

    def cycle_role_filter(self) -> None:
        app = self.host
        strip = app.strip
        present = {t.role for t in app.state.tokens}
        options = [r for r in ROLE_FILTERS if r is None or r in present]
        k = options.index(strip.role_filter) if strip.role_filter in options else 0
        self.set_role_filter(options[(k + 1) % len(options)])

    def set_role_filter(self, role: str | None) -> None:
        app = self.host
        strip = app.strip
        strip.role_filter = role
        strip.follow = False
        strip.refresh_tokens()
        if self.search_text:
            self._run_search(quiet=True)
        app.find_changed()
        app.pane.show(strip.cursor)
        app.notify(f"showing {_ROLE_WORDS.get(role, 'every role') if role else 'every role'} (v cycles)", timeout=2)

    # ------------------------------------------------------------ minimap

    def map_step(self, direction: int) -> None:
        """< / >: the first token of the previous / next minimap cell."""
        app = self.host
        mm, strip = app.minimap, app.strip
        if strip.cursor < 0:
            return
        cell = mm.bucket_of(strip.cursor) + direction
        target = mm.index_at(cell)
        if target is not None:
            strip.set_cursor(target)

    def map_mode(self) -> None:
        from .widgets.minimap import MODES

        app = self.host
        mm = app.minimap
        mm.mode = MODES[(MODES.index(mm.mode) + 1) % len(MODES)]
        mm.update_map()
        words = {"auto": "fidelity where explained, else norm", "norm": "activation norm",
                 "surprise": "surprise"}
        app.notify(f"overview coloured by {words[mm.mode]} (g cycles)", timeout=2)

    # ------------------------------------------------------------ limited explain-all

    def explain_scope_dialog(self) -> None:
        app = self.host
        cursor = app.strip.cursor
        if cursor < 0:
            app.notify("No token yet: chat first (i) or open a transcript (o).", severity="warning")
            return
        tok = app.state.tokens[cursor]
        choices = [("role", f"every {tok.role} token (the cursor's role)"),
                   ("turn", f"this turn (message {tok.turn})"),
                   ("span", f"this span (the run of {tok.role} tokens around the cursor)"),
                   ("surprising", f"the {MOST_SURPRISING} most surprising tokens")]

        def done(scope: str | None) -> None:
            if scope:
                self.explain_scope(scope)

        app.push_screen(ChoiceDialog("Explain which tokens? (in the background, like a)", choices), done)

    def explain_scope(self, scope: str) -> None:
        app = self.host
        indices = [i for i in scope_indices(app.state, scope, app.strip.cursor, app.strip.shown_indices)
                   if i not in app.state.explanations]
        app.start_explain_all(indices)
