"""Build the worker for `nla-tui` (real models) or `nla-tui open` (a saved session).

Nothing here imports torch at module import: the real engine is constructed by
a factory that EngineWorker calls on its own thread, so the first frame draws
while the models load (and `import nla_tui.ui.app` stays torch-free).
"""

from __future__ import annotations

from typing import Any, Callable

from ..core import events as ev


def engine_factory(options: Any) -> Callable[[], Any]:
    def build() -> Any:
        # Imports torch: only ever runs on the worker thread.
        from ..core.engine import Engine, EngineOptions

        try:
            from ..cli import engine_options

            opts = engine_options(options)  # every model flag the CLI knows (--layer, --devices…)
        except AttributeError:  # a bare Namespace (tests, scripts): the basic flags only
            opts = EngineOptions(**{k: getattr(options, k, None) for k in
                                    ("preset", "subject", "av", "ar", "quant", "device")})
        return Engine(opts)

    return build


def worker_factory_for(options: Any) -> Callable[[Callable[[ev.Event], None]], Any]:
    session = getattr(options, "session", None)
    if session:
        from .replay import ReplayWorker

        return lambda emit: ReplayWorker(session, emit, preload=True)

    def make(emit: Callable[[ev.Event], None]) -> Any:
        from ..core.worker import EngineWorker

        return EngineWorker(engine_factory(options), emit)

    return make
