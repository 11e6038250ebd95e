"""`nla-tui` with no subcommand: the TUI over real models.

The CLI composes the app: it gives the UI factories for its workers, so the UI
imports neither the engine nor torch. The Engine itself is built on the worker's
thread, so the first frame draws while the models load.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

from ..core.errors import InputError
from ..core.options import EngineOptions
from ..ui.options import UiOptions
from .common import engine_options


def engine_worker(opts: EngineOptions, emit: Callable[[Any], None]) -> Any:
    """An EngineWorker whose Engine (and torch) is built on the worker's own thread."""
    from ..core.runtime.worker import EngineWorker

    def build() -> Any:
        from ..core.runtime.engine import Engine

        return Engine(opts)

    return EngineWorker(build, emit)


def add_server_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("attached to a server")
    g.add_argument("--server", help="run against a running `nla-tui serve` at this URL instead of loading models "
                                    "(e.g. http://127.0.0.1:8765 through an SSH tunnel)")
    g.add_argument("--token", help="that server's token (default: NLA_TUI_TOKEN, or this user's token file)")


MODEL_FLAGS = ("preset", "subject", "av", "ar", "layer", "quant", "subject_quant", "device", "devices", "fve_variance",
               "park", "extra_pair")


def remote_worker(args: argparse.Namespace, emit: Callable[[Any], None]) -> Any:
    """The TUI's worker speaking to the server (the UI does not change)."""
    from ..client.worker import RemoteWorker

    return RemoteWorker(args.server, args.token, emit)


def cmd_tui(args: argparse.Namespace) -> int:
    from ..ui.launch import run_app

    from ..core.nla.presets import DEMO_EXAMPLE

    messages = getattr(args, "messages", None)
    shown = dict(messages=messages,
                 # Opened only if the models turn out to be the demo's (it may be the default).
                 example=None if messages else str(DEMO_EXAMPLE),
                 color_system=args.color_system, mouse=not args.no_mouse, autosave=True)
    if getattr(args, "server", None):
        given = [f"--{f.replace('_', '-')}" for f in MODEL_FLAGS if getattr(args, f, None) is not None]
        if given:
            raise InputError(f"{', '.join(given)} cannot be used with --server: the server's models are used "
                             f"(choose them with `nla-tui serve`).")
        if not args.server.startswith(("http://", "https://")):
            raise InputError(f"--server {args.server!r} is not a URL; give e.g. http://127.0.0.1:8765.")
        if args.token is None:
            from ..client import default_token

            args.token = default_token()  # no token: say so now, before the first frame
        return run_app(UiOptions(**shown), lambda emit: remote_worker(args, emit),
                       lambda opts, emit: remote_worker(args, emit)) or 0
    opts = engine_options(args)  # every model flag, checked before the first frame
    return run_app(UiOptions(engine=opts, **shown), lambda emit: engine_worker(opts, emit), engine_worker) or 0
