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
        from ..core.engine import Engine  # imports torch: only ever on the worker thread

        return Engine.from_options(
            preset=getattr(options, "preset", None) or "demo",
            subject=getattr(options, "subject", None),
            av=getattr(options, "av", None),
            ar=getattr(options, "ar", None),
            quant=getattr(options, "quant", None),
            device=getattr(options, "device", None),
        )

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
