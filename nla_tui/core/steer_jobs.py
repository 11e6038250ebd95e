"""Worker jobs and events for steering and compare. Plain dataclasses, like
events.py (torch-free: the UI imports them); the worker runs them in
runtime/steer_worker.py (a mixin of EngineWorker)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .steer_results import Comparison, SteerResult
from .steer_sources import TextReading, VectorSource
from .events import PRIORITY_EXPLAIN, Event, Job, JobKind
from .types import CONTINUATION_TOKENS, Sampling

# Steering strength, × the activation's own norm. Measured on the demo pair (tests/
# test_steering.py): the edit's words gain +4.2 nats at 0.25, +3.1 at 0.5 and lose 4.1 at
# 1.0 (overshoot); the margin over the best of 8 random vectors of the same size is
# largest at 0.5 (18.8 nats). 0.5 is a visible push that still follows the edit.
DEFAULT_ALPHA = 0.5
MAX_ALPHA = 100.0  # the demo pair already overshoots at 1; beyond this the output is only padding
MAX_CONTINUATION = 4096  # tokens regenerated per side: bounds the KV memory before any model loads


@dataclass
class Steer(Job):
    """Regenerate from token `index` steered by `source` (a file, a − b, an SAE feature;
    steer_sources.py) or, without one, toward the edited explanation `edited`
    (runtime/steer.py: steer)."""

    kind: ClassVar[JobKind] = JobKind.STEER

    index: int
    edited: str = ""
    original: str | None = None
    alpha: float = DEFAULT_ALPHA
    span: str = "here"
    max_new_tokens: int = CONTINUATION_TOKENS
    sampling: Sampling = field(default_factory=Sampling)
    source: VectorSource | None = None

    def steering_source(self) -> VectorSource:
        return self.source if self.source is not None else TextReading(self.index, self.edited, self.original)

    @property
    def key(self) -> str:
        return f"steer:{id(self)}"  # never deduplicated: each edit is its own steered continuation

    @property
    def priority(self) -> int:
        return PRIORITY_EXPLAIN


@dataclass
class Compare(Job):
    """Explain a − b and b − a for tokens i and j (runtime/steer.py: compare)."""

    kind: ClassVar[JobKind] = JobKind.COMPARE

    i: int
    j: int
    sampling: Sampling = field(default_factory=Sampling)

    @property
    def key(self) -> str:
        return "compare"

    @property
    def priority(self) -> int:
        return PRIORITY_EXPLAIN


@dataclass
class SteerDone(Event):
    result: SteerResult


@dataclass
class CompareDone(Event):
    comparison: Comparison


@dataclass
class SteerProgress(Event):
    """How far a compare (or steer) has got: `what` it is doing, tokens written of at most
    `total` (rows that close early count as full), and the time left at that pace."""

    what: str
    done: int
    total: int
    eta_s: float | None = None
