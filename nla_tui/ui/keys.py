"""Every key of the app in one table: the help screen and docs/TUI.md read it."""

from __future__ import annotations

KEYS: list[tuple[str, list[tuple[str, str]]]] = [
    ("Token strip", [
        ("← / →", "previous / next token"),
        ("ctrl+← / ctrl+→, b / f", "previous / next word"),
        ("↑ / ↓", "token on the row above / below"),
        ("Home / End", "first / last token (End follows a streaming reply)"),
        ("PgUp / PgDn", "previous / next turn"),
        ("s", "show / hide special tokens (<bos>, turn markers)"),
        ("click", "put the cursor on a token"),
    ]),
    ("Finding tokens", [
        ("/", "search token and explanation text (regex; smart case)"),
        ("] / [", "next / previous match"),
        ("j / J", "next / previous token by lowest fidelity (explained tokens)"),
        ("m / M", "next / previous token by highest activation norm"),
        ("u / U", "next / previous token by largest surprise (low probability of the token that came next)"),
        ("v", "show only one role: model, user, tool call, tool result, system, all"),
        ("< / >", "overview line: previous / next cell (click a cell to jump there)"),
        ("g", "overview colour: fidelity (else norm) / norm / surprise"),
    ]),
    ("Explanations", [
        ("e", "explain the token under the cursor"),
        ("r", "resample (new seed; temperature ≥ 0.7 if greedy)"),
        ("n", "draw 4 samples, ranked by AR score"),
        ("t", "set the AV sampling temperature (0 = greedy)"),
        ("p", "edit the AV prompt (must contain <INJECT>)"),
        ("x", "auto-explain the token under the cursor on/off"),
        ("a", "explain every token of the conversation (background)"),
        ("A", "explain every token of the current turn"),
        ("E", "explain the cursor's role, turn or span, or the 200 most surprising tokens"),
        ("y", "copy the explanation (OSC 52, works over SSH)"),
    ]),
    ("What if / compare", [
        ("w", "what-if: edit the explanation, regenerate steered from here (before/after side by side)"),
        ("c", "compare: c marks token A, c on token B explains a − b and b − a (Esc clears A)"),
    ]),
    ("Chat", [
        ("i / Tab", "focus the message box"),
        ("Enter", "send the message (the reply streams in)"),
        ("o", "open a transcript (OpenAI chat format: JSON list, {messages: [...]} or JSONL)"),
        ("C", "corpus: search a sweep's output (nla-tui sweep); Enter opens a hit on its token, f / s / u sort"),
    ]),
    ("Sessions", [
        ("ctrl+s", "save the session under a name (it also autosaves after every job and on exit)"),
        ("ctrl+o / f2", "saved sessions: Enter opens, r renames, d deletes"),
        ("X", "export the session as Markdown, HTML or JSON (the file name picks the format)"),
        ("L", "read-only session (nla-tui open): load its models to explain new tokens"),
    ]),
    ("App", [
        ("Esc", "cancel the running job (in the message box: leave it)"),
        ("? / F1", "this help"),
        ("ctrl+p", "command palette"),
        ("ctrl+q", "quit"),
    ]),
]


def keys_markdown() -> str:
    lines = []
    for section, rows in KEYS:
        lines += [f"### {section}", "", "| Key | Action |", "|---|---|"]
        lines += [f"| {k.replace('|', '/')} | {v.replace('<', '&lt;')} |" for k, v in rows]
        lines.append("")
    return "\n".join(lines)
