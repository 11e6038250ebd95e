"""User-facing errors: one paragraph that says what is wrong and how to fix it.

The CLI prints `NlaError` without a traceback and exits 2; the TUI shows it in a
notification and keeps running. Anything else is a bug and gets a traceback.
"""


class NlaError(Exception):
    """A problem the user can fix (bad input, missing weights, drifted checkpoint)."""


class CheckpointError(NlaError):
    """An NLA checkpoint (sidecar, tokenizer, value head) is inconsistent."""


class InputError(NlaError):
    """Bad user input: empty prompt, malformed messages file, bad vector."""


class Cancelled(Exception):
    """A job was cancelled by the user (Esc). Not an error."""
