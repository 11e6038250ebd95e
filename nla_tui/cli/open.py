"""`nla-tui open PATH`: browse a saved session without loading any model.

Everything recorded is shown (strip, explanations, scores, next-token candidates);
chatting and explaining new tokens are refused with a note, since no model is
loaded. No Engine is constructed and torch is never imported on this path: the app
runs over a ReplayWorker (preload=True) serving the loaded Session, until `L` asks
for the session's models (an EngineWorker built by cli.tui.engine_worker).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from ..ui.options import UiOptions
from .common import add_display_args


def add_subparser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "open", help="browse a saved session in the TUI without loading any model",
        description="Open a saved session directory (it holds session.json). Loads no model: "
                    "everything recorded is browsable. Press L in the app to load the session's "
                    "models (on this machine) and explain new tokens, steer or compare.")
    p.add_argument("path", help="session directory (or its session.json)")
    add_display_args(p)
    p.set_defaults(func=run_open)
    return p


def open_options(path: str | Path, **extra: Any) -> UiOptions:
    """Load the session (InputError with a clear message if missing or corrupt) and
    build the options run_app / create_app take."""
    from ..core.store.session import SESSION_FILE, load_session

    session = load_session(path)  # raises InputError: the CLI prints it and exits 2
    p = Path(path).expanduser()
    directory = p.parent if p.name == SESSION_FILE and p.is_file() else p
    return UiOptions(session=session, session_dir=directory.resolve(), **extra)


def replay_worker(options: UiOptions) -> Callable[[Any], Any]:
    """The worker factory for an opened session: a ReplayWorker serving it, no model."""
    from ..core.runtime.replay import ReplayWorker

    return lambda emit: ReplayWorker(options.session, emit, preload=True)


def run_open(args: argparse.Namespace) -> int:
    from ..ui.launch import run_app
    from .tui import engine_worker

    options = open_options(args.path, color_system=args.color_system, mouse=not args.no_mouse,
                           autosave=True)
    return run_app(options, replay_worker(options), engine_worker) or 0
