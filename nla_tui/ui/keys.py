"""The app's one keymap. Every key is a Binding here, carrying its short description (the
footer), its help text (the tooltip: the help screen, docs/TUI.md) and its help section; a
`palette` title puts it in the command palette (ctrl+p) too. (The section is not Textual's
Binding.group: that one folds the footer's keys under a group name.)

The app and the token strip take their BINDINGS from `bindings_for`; the help screen, the
palette and `keys_markdown` (docs/TUI.md) read the same entries, so a key cannot be bound
without being documented, or documented without being bound. A few rows are not key
bindings of ours (a mouse click, the message box's Enter, Textual's own ctrl+p): they are
`Unbound` rows, kept in the same list so the help keeps its order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from textual.binding import Binding

STRIP = "Token strip"
FIND = "Finding tokens"
EXPLAIN = "Explanations"
STEER = "Steer / compare"
NOTES = "Notes"
BRANCHES = "Branches"
CHAT = "Chat"
SESSIONS = "Sessions"
APP = "App"


@dataclass(frozen=True)
class Key(Binding):
    """A Binding of the app (`widget="app"`) or of the token strip (`widget="strip"`)."""

    section: str = APP  # the help screen's heading
    widget: str = "app"
    palette: str | None = None  # command-palette title; its help line is the tooltip


@dataclass(frozen=True)
class Unbound:
    """A help row that is not one of our bindings."""

    key_display: str
    tooltip: str
    section: str


def _k(key: str, action: str, description: str, tooltip: str, section: str, *, show: bool = False,
       display: str | None = None, widget: str = "app", palette: str | None = None,
       priority: bool = False) -> Key:
    return Key(key, action, description, show=show, key_display=display, priority=priority, tooltip=tooltip,
               section=section, widget=widget, palette=palette)


# Rows with the same tooltip in a row (← and →) are one help row, shown with the first one's keys.
KEYMAP: list[Key | Unbound] = [
    _k("left", "move(-1)", "←token", "previous / next token", STRIP, display="← / →", widget="strip"),
    _k("right", "move(1)", "token→", "previous / next token", STRIP, widget="strip"),
    _k("ctrl+left,b", "word(-1)", "word", "previous / next word", STRIP, display="ctrl+← / ctrl+→, b / f",
       widget="strip"),
    _k("ctrl+right,f", "word(1)", "word", "previous / next word", STRIP, widget="strip"),
    _k("up", "line(-1)", "line", "token on the row above / below", STRIP, display="↑ / ↓", widget="strip"),
    _k("down", "line(1)", "line", "token on the row above / below", STRIP, widget="strip"),
    _k("home", "edge(0)", "first", "first / last token (End follows a streaming reply)", STRIP,
       display="Home / End", widget="strip"),
    _k("end", "edge(1)", "last", "first / last token (End follows a streaming reply)", STRIP, widget="strip"),
    _k("pageup", "turn(-1)", "turn", "previous / next turn", STRIP, display="PgUp / PgDn", widget="strip"),
    _k("pagedown", "turn(1)", "turn", "previous / next turn", STRIP, widget="strip"),
    _k("s", "toggle_special", "specials", "show / hide special tokens (<bos>, turn markers)", STRIP,
       palette="Toggle special tokens"),
    Unbound("click", "put the cursor on a token", STRIP),

    _k("slash", "search", "search", "search token, explanation and note text (regex; smart case)", FIND,
       display="/", palette="Search"),
    _k("right_square_bracket", "match(1)", "next match", "next / previous match", FIND, display="] / ["),
    _k("left_square_bracket", "match(-1)", "previous match", "next / previous match", FIND),
    _k("j", "jump('fidelity', 1)", "lowest fidelity",
       "next / previous token by lowest fidelity (explained tokens)", FIND, display="j / J",
       palette="Jump to the lowest fidelity"),
    _k("J", "jump('fidelity', -1)", "", "next / previous token by lowest fidelity (explained tokens)", FIND),
    _k("m", "jump('norm', 1)", "highest norm", "next / previous token by highest activation norm", FIND,
       display="m / M", palette="Jump to the highest norm"),
    _k("M", "jump('norm', -1)", "", "next / previous token by highest activation norm", FIND),
    _k("u", "jump('surprise', 1)", "surprise",
       "next / previous token by largest surprise (low probability of the token that came next)", FIND,
       display="u / U", palette="Jump to the largest surprise"),
    _k("U", "jump('surprise', -1)", "",
       "next / previous token by largest surprise (low probability of the token that came next)", FIND),
    _k("v", "role_filter", "role filter", "show only one role: model, user, tool call, tool result, system, all",
       FIND, palette="Role filter"),
    _k("less_than_sign", "map_step(-1)", "map ←",
       "overview line: previous / next cell (click a cell to jump there)", FIND, display="< / >"),
    _k("greater_than_sign", "map_step(1)", "map →",
       "overview line: previous / next cell (click a cell to jump there)", FIND),
    _k("g", "map_mode", "map colour", "overview colour: fidelity (else norm) / norm / surprise", FIND),

    _k("e", "explain", "explain", "explain the token under the cursor", EXPLAIN, show=True,
       palette="Explain token"),
    _k("r", "resample", "resample", "resample (new seed; temperature ≥ 0.7 if greedy)", EXPLAIN, show=True,
       palette="Resample explanation"),
    _k("R", "samples", "4 samples", "draw 4 samples, ranked by AR score", EXPLAIN, show=True,
       palette="Rank 4 samples"),
    _k("t", "temperature", "temp", "set the AV sampling temperature (0 = greedy)", EXPLAIN,
       palette="Set temperature"),
    _k("p", "prompt", "prompt", "edit the AV prompt (must contain <INJECT>)", EXPLAIN, palette="Edit AV prompt"),
    _k("x", "toggle_auto", "auto-explain", "auto-explain the token under the cursor on/off", EXPLAIN,
       palette="Toggle auto-explain"),
    _k("a", "explain_all(False)", "explain all", "explain every token of the conversation (background)", EXPLAIN,
       show=True, palette="Explain all"),
    _k("A,shift+a", "explain_all(True)", "explain turn", "explain every token of the current turn", EXPLAIN,
       display="A", palette="Explain current turn"),
    _k("ctrl+e", "explain_scope", "explain…",
       "explain the cursor's role, turn or span, or the 200 most surprising tokens", EXPLAIN,
       palette="Explain a role, turn, span or the most surprising"),
    _k("2", "explain_pair", "2nd pair",
       "explain the token with the second, extra pair (--extra-pair); on a token it explained: show / hide it",
       EXPLAIN, palette="Explain with the extra pair"),
    _k("F", "check_fidelity", "fidelity check",
       "quantisation self-check: the running precision's activations and readouts against bf16 (fp32 on CPU); "
       "cached per models and precisions", EXPLAIN, palette="Fidelity self-check"),
    _k("y", "copy", "copy", "copy the explanation (OSC 52, works over SSH)", EXPLAIN, palette="Copy explanation"),

    _k("w", "steer", "steer",
       "steer: add a vector (edited explanation, vector file, a − b, SAE feature), regenerate from here "
       "(before/after side by side)", STEER,
       palette="Steer…"),
    _k("c", "compare", "compare", "compare: c marks token A, c on token B explains a − b and b − a (Esc clears A)",
       STEER, palette="Compare tokens"),

    _k("n", "note", "note", "note on the token under the cursor (or a span from it; saved, exported, found by /)",
       NOTES, palette="Add a note"),
    _k("N", "notes", "notes", "the notes panel: every note, Enter jumps to its tokens, d deletes", NOTES,
       palette="Notes panel"),

    # E: edit (ctrl+e is explain-limited); B and P were free (b is next word, p the AV prompt).
    _k("E", "edit_message", "edit",
       "edit the message under the cursor (a turn, the system prompt, a tool result): it re-runs as a new branch",
       BRANCHES, palette="Edit message (new branch)"),
    _k("B", "branches", "branches", "the branch list: label, parent, the message changed; Enter shows a branch",
       BRANCHES, palette="Branch list"),
    _k("P", "compare_parent", "vs parent",
       "on a branch: the parent's token, fve and explanation beside this one's (e then explains both)", BRANCHES,
       palette="Compare with the parent branch"),

    _k("i", "focus_input", "chat", "focus the message box", CHAT, display="i / Tab"),
    Unbound("Enter", "send the message (the reply streams in)", CHAT),
    _k("o", "open_transcript", "open", "open a transcript (OpenAI chat format: JSON list, {messages: [...]} or JSONL)",
       CHAT, palette="Open transcript"),
    _k("C", "corpus", "corpus",
       "corpus: search a sweep's output (nla-tui sweep); Enter opens a hit on its token, f / s / u sort", CHAT,
       palette="Open a corpus sweep"),

    _k("ctrl+s", "save_session", "save", "save the session under a name (it also autosaves after every job and on exit)",
       SESSIONS, palette="Save session"),
    _k("ctrl+o,f2", "sessions", "sessions", "saved sessions: Enter opens, r renames, d deletes", SESSIONS,
       display="ctrl+o / f2", palette="Browse sessions"),
    _k("X", "export", "export", "export the session as Markdown, HTML or JSON (the file name picks the format)",
       SESSIONS),
    _k("L", "load_models", "load models", "read-only session (nla-tui open): load its models to explain new tokens",
       SESSIONS),

    _k("escape", "cancel", "cancel", "cancel the running job (in the message box: leave it)", APP, show=True,
       palette="Cancel"),
    _k("question_mark,f1", "help", "help", "this help", APP, show=True, palette="nla-tui keys"),
    Unbound("ctrl+p", "command palette", APP),
    _k("ctrl+q", "quit", "quit", "quit", APP, show=True, priority=True),
]

# How a binding's key names read in the help (Textual's names are for code).
_KEY_NAMES = {"question_mark": "?", "escape": "Esc", "f1": "F1", "f2": "f2", "slash": "/", "shift+a": "A"}


# The footer lists the shown keys in BINDINGS order: app-wide ones first, then the explain keys.
_FOOTER = ("quit", "cancel", "help", "explain", "resample", "samples", "explain_all(False)")


def bindings_for(widget: str) -> list[Binding]:
    """The BINDINGS of the app ("app") or of the token strip ("strip"), footer keys first."""
    mine = [k for k in KEYMAP if isinstance(k, Key) and k.widget == widget]
    return sorted(mine, key=lambda k: _FOOTER.index(k.action) if k.action in _FOOTER else len(_FOOTER))


def key_display(row: Key | Unbound) -> str:
    if row.key_display:
        return row.key_display
    return " / ".join(_KEY_NAMES.get(k, k) for k in row.key.split(","))


def help_rows() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """(section, [(keys, what they do)]) in keymap order; a run of bindings with one tooltip is one row."""
    section: str | None = None
    rows: list[tuple[str, str]] = []
    last_tip = None
    for entry in KEYMAP:
        name = entry.section
        if name != section:
            if section is not None:
                yield section, rows
            section, rows, last_tip = name, [], None
        if entry.tooltip != last_tip:
            rows.append((key_display(entry), entry.tooltip))
        last_tip = entry.tooltip
    if section is not None:
        yield section, rows


def palette_entries() -> Iterator[tuple[str, str, str]]:
    """(title, help line, action) for every key with a palette title."""
    for entry in KEYMAP:
        if isinstance(entry, Key) and entry.palette:
            yield entry.palette, f"{entry.tooltip[0].upper()}{entry.tooltip[1:]} ({key_display(entry)})", entry.action


def keys_markdown() -> str:
    lines = []
    for section, rows in help_rows():
        lines += [f"### {section}", "", "| Key | Action |", "|---|---|"]
        lines += [f"| {k.replace('|', '/')} | {v.replace('<', '&lt;')} |" for k, v in rows]
        lines.append("")
    return "\n".join(lines)
