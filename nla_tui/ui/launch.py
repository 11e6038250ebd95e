"""Running the app from the command line: `nla-tui` and `nla-tui open` (nla_tui.cli
builds the workers and calls run_app)."""

from __future__ import annotations

import sys
from typing import Any

from .app import EngineWorkerFactory, WorkerFactory, create_app


def run_app(options: Any, worker_factory: WorkerFactory,
            engine_worker: EngineWorkerFactory | None = None) -> int | None:
    """Entry for `nla-tui` and `nla-tui open PATH` (nla_tui.cli builds the workers)."""
    if getattr(options, "autosave", None) is None:
        options.autosave = True  # the CLI saves every session; tests opt in
    app = create_app(worker_factory, options, engine_worker)
    app.run(mouse=not getattr(options, "no_mouse", False))
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
