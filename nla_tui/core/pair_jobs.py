"""A second AV/AR pair over the same subject ("several pairs, one token"): what the pair
is, and the worker job and events that explain a token with it. Plain dataclasses like
events.py (torch-free: the UI imports them); EngineWorker runs the job in
runtime/pair_worker.py, ReplayWorker serves what a saved session holds.

The pair is loaded with `--extra-pair av=DIR,ar=DIR[,label=NAME]` (EngineOptions.extra_pair)
and is known by its name, `EXTRA`. Its explanations are kept apart from the main pair's
(never mixed into `explanations`), keyed by token index like them.

Events, in the order the worker sends them:
- after ModelsReady: PairReady (what the extra pair is), when one is loaded;
- ExplainWithPair: PairExplainDelta (the text so far, "" when it starts), then PairExplainDone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .events import PRIORITY_EXPLAIN, Event, Job, JobKind
from .options import PairSpec
from .types import Explanation, ModelInfo, Sampling

EXTRA = "extra"  # the extra pair's name in jobs, events and sessions


@dataclass
class PairInfo:
    """The extra pair's identity: `models` is a ModelInfo whose av/ar/layer and scales are
    the pair's (the subject, precision and device are the main engine's), so it keys the
    explanation cache exactly as running that pair alone would. `label` is what the UI and
    exports call it (--extra-pair's label=, else the sidecar's training label, else the AV
    directory's name)."""

    name: str
    label: str
    models: ModelInfo

    @property
    def layer(self) -> int:
        return self.models.layer

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "models": self.models.to_json()}

    def spec(self) -> PairSpec | None:
        """The --extra-pair that loads this pair again (L on a saved session), or None when its
        directories are not on this machine (a session made elsewhere)."""
        m = self.models
        if not all(Path(p).expanduser().is_dir() for p in (m.av, m.ar)):
            return None
        return PairSpec(m.av, m.ar, self.label)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "PairInfo":
        if not isinstance(d.get("name"), str) or not isinstance(d.get("label"), str):
            raise TypeError("extra_pair.name and extra_pair.label must be strings")
        if not isinstance(d.get("models"), dict):
            raise TypeError("extra_pair.models must be a mapping")
        return cls(d["name"], d["label"], ModelInfo.from_json(d["models"]))


@dataclass
class ExplainWithPair(Job):
    """Explain token `index` with the pair named `pair` (the cursor's token: a newer request
    replaces a queued one, and moving the cursor cancels a running one like Explain)."""

    kind: ClassVar[JobKind] = JobKind.EXPLAIN_PAIR

    index: int
    pair: str = EXTRA
    sampling: Sampling = field(default_factory=Sampling)
    prompt: str | None = None
    force: bool = False  # bypass what the engine and the explanation cache hold

    @property
    def key(self) -> str:
        return f"explain-pair:{self.pair}"

    @property
    def priority(self) -> int:
        return PRIORITY_EXPLAIN

    @property
    def cursor_index(self) -> int | None:
        return self.index


@dataclass
class PairReady(Event):
    """An extra pair is loaded beside the main one (sent after ModelsReady)."""

    pair: PairInfo


@dataclass
class PairExplainDelta(Event):
    """The extra pair's explanation text so far for `index` ("" when it starts)."""

    pair: str
    index: int
    text: str


@dataclass
class PairExplainDone(Event):
    """The extra pair's finished explanations of token `index`."""

    pair: str
    index: int
    explanations: list[Explanation]
    cached: bool = False
