"""Running the app from the command line: `nla-tui` and `nla-tui open` (nla_tui.cli
builds the workers and calls run_app)."""

from __future__ import annotations

import sys

from .app import EngineWorkerFactory, WorkerFactory, create_app
from .options import UiOptions


def run_app(options: UiOptions, worker_factory: WorkerFactory,
            engine_worker: EngineWorkerFactory | None = None) -> int | None:
    """Entry for `nla-tui` and `nla-tui open PATH` (nla_tui.cli builds the options and workers)."""
    app = create_app(worker_factory, options, engine_worker)
    app.run(mouse=options.mouse)
    saved = app.keeper.last_saved if hasattr(app, "keeper") else None
    if hasattr(app, "keeper") and app.keeper.dirty and app.keeper.saver.last_error is not None:
        print(f"nla-tui: the last changes were NOT saved: {app.keeper.saver.last_error}",
              file=sys.stderr)
    if saved is not None:
        try:
            print(f"session saved to {saved} (reopen: nla-tui open {saved})")
        except OSError:  # the terminal is gone (SIGHUP): the save itself is done
            pass
    return app.return_code or None  # 128+N after SIGTERM / SIGHUP (saved first)
