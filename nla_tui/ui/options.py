"""What the command line tells the app, typed and frozen: built once by the CLI (cli/tui.py,
cli/open.py) or a test, read by the app. The UI never sees argparse."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from ..core.options import EngineOptions
from ..core.store.session import Session
from ..core.types import REPLY_TOKENS


@dataclass(frozen=True)
class UiOptions:
    # This run's model flags: `L` on a read-only session loads its models with these
    # (device, precision, caches), the session's own checkpoints winning (from_model_info).
    engine: EngineOptions = field(default_factory=EngineOptions)
    messages: str | None = None  # a transcript to open at start (--messages)
    example: str | None = None  # the demo's example conversation, opened if the models are the demo's
    session: Session | None = None  # nla-tui open: the store.session.Session shown (read-only until L)
    session_dir: Path | None = None  # ... and where it lives
    max_new_tokens: int = REPLY_TOKENS  # chat reply length
    color_system: str | None = None
    mouse: bool = True
    autosave: bool = False  # the CLI saves every session; tests opt in
