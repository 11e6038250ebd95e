"""What the app's controllers may use of the app: a typed Protocol, not `Any`.

NlaApp (ui/app.py) composes small controllers, one per job: Finder (find_actions.py),
Steering (steer_actions.py), Sessions (session_actions.py), Corpus (corpus_actions.py)
and Inputs (input_actions.py). Each holds an `AppHost`, the surface of the app it
works through; NlaApp satisfies it structurally, so no controller imports app.py (which
imports them) and none reaches into the app's other state. The workers' types are here
too: the app, the controllers and the CLI's launcher name them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol

from ..core import events as ev
from ..core.options import EngineOptions
from ..core.types import Sampling

if TYPE_CHECKING:
    from textual.screen import Screen

    from .options import UiOptions
    from .state import UiState
    from .widgets.chat import ChatPane
    from .widgets.explanation import ExplanationPane
    from .widgets.minimap import Minimap
    from .widgets.status import ExplainAllBar
    from .widgets.token_strip import TokenStrip


class WorkerLike(Protocol):
    def start(self) -> None: ...
    def submit(self, job: ev.Job) -> None: ...
    def cancel_current(self) -> None: ...
    def stop(self) -> None: ...


Emit = Callable[[ev.Event], None]
WorkerFactory = Callable[[Emit], WorkerLike]
# Builds a worker over real models for given EngineOptions (L on a read-only session).
# The CLI passes it in, so the UI never imports the engine (or torch) itself.
EngineWorkerFactory = Callable[[EngineOptions, Emit], WorkerLike]


class AppHost(Protocol):
    """The app as its controllers see it."""

    state: UiState
    options: UiOptions
    worker: WorkerLike | None
    engine_worker: EngineWorkerFactory | None
    temperature: float
    av_prompt: str | None

    @property
    def strip(self) -> TokenStrip: ...
    @property
    def chat(self) -> ChatPane: ...
    @property
    def pane(self) -> ExplanationPane: ...
    @property
    def minimap(self) -> Minimap: ...
    @property
    def allbar(self) -> ExplainAllBar: ...
    @property
    def screen(self) -> Screen[Any]: ...

    def emit(self, event: ev.Event) -> None: ...
    def submit(self, job: ev.Job) -> None: ...
    def cursor_index(self) -> int | None: ...
    def sampling(self, resample: bool) -> Sampling: ...
    def needs_models(self, what: str) -> bool: ...
    def start_explain_all(self, indices: list[int]) -> None: ...
    def update_status(self) -> None: ...
    def find_changed(self) -> None: ...
    def forget_example(self) -> None: ...
    def notify(self, message: str, *, title: str = "", **kwargs: Any) -> None: ...
    def push_screen(self, screen: Any, callback: Any = None, wait_for_dismiss: bool = False) -> Any: ...
    def call_from_thread(self, callback: Callable[..., Any], *args: Any, **kwargs: Any) -> Any: ...
    def exit(self, result: Any = None, return_code: int = 0, message: Any = None) -> None: ...
