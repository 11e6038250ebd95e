"""`nla-tui` with no subcommand: the TUI over real models.

The CLI composes the app: it gives the UI factories for its workers, so the UI
imports neither the engine nor torch. The Engine itself is built on the worker's
thread, so the first frame draws while the models load.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

from ..core.options import EngineOptions
from .common import engine_options


def engine_worker(opts: EngineOptions, emit: Callable[[Any], None]) -> Any:
    """An EngineWorker whose Engine (and torch) is built on the worker's own thread."""
    from ..core.runtime.worker import EngineWorker

    def build() -> Any:
        from ..core.runtime.engine import Engine

        return Engine(opts)

    return EngineWorker(build, emit)


def cmd_tui(args: argparse.Namespace) -> int:
    from ..ui.launch import run_app

    opts = engine_options(args)  # every model flag, checked before the first frame
    if not getattr(args, "messages", None):
        from ..core.nla.presets import DEMO_EXAMPLE

        # Opened only if the models turn out to be the demo's (it may be the default).
        args.example = str(DEMO_EXAMPLE)
    return run_app(args, lambda emit: engine_worker(opts, emit), engine_worker) or 0
