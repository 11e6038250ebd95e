"""The command palette's entries for the app's own actions (ctrl+p)."""

from __future__ import annotations

from typing import Any, Iterable

from textual.app import SystemCommand


def palette_commands(app: Any) -> Iterable[SystemCommand]:
    yield SystemCommand("Explain token", "Explain the token under the cursor (e)", app.action_explain)
    yield SystemCommand("Resample explanation", "New sample at temperature > 0 (r)", app.action_resample)
    yield SystemCommand("Rank 4 samples", "Draw 4 explanations, best AR score first (n)",
                        app.action_samples)
    yield SystemCommand("Explain all", "Explain every token in the background (a)",
                        lambda: app.action_explain_all(False))
    yield SystemCommand("Explain current turn", "Explain every token of this turn (A)",
                        lambda: app.action_explain_all(True))
    yield SystemCommand("Cancel", "Cancel the running job (Esc)", app.action_cancel)
    yield SystemCommand("Set temperature", "AV sampling temperature (t)", app.action_temperature)
    yield SystemCommand("Edit AV prompt", "Custom prompt with <INJECT> (p)", app.action_prompt)
    yield SystemCommand("Toggle special tokens", "Show/hide <bos> and turn markers (s)",
                        app.action_toggle_special)
    yield SystemCommand("Toggle auto-explain", "Explain the cursor token as you move (x)",
                        app.action_toggle_auto)
    yield SystemCommand("Copy explanation", "Copy via OSC 52 (y)", app.action_copy)
    yield SystemCommand("What if…", "Edit this token's explanation and regenerate steered (w)", app.action_what_if)
    yield SystemCommand("Compare tokens", "Mark A, then on B explain a − b and b − a (c)", app.action_compare)
    yield SystemCommand("Open transcript", "Load a JSON chat transcript (o)", app.action_open_transcript)
    yield SystemCommand("Open a corpus sweep", "Search a sweep's explanations, open a hit (C)", app.action_corpus)
    yield SystemCommand("nla-tui keys", "Every key of nla-tui (? or F1)", app.action_help)
