"""Jobs the UI (or a script) submits to the worker, and the typed events it gets back.

Plain dataclasses: the UI wraps each event in one Textual message and posts it
with `app.post_message` (thread-safe), so this module stays free of Textual.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

from .fidelity_report import FidelityReport
from .types import REPLY_TOKENS, Candidate, CardMemory, Explanation, Message, ModelInfo, Sampling, TokenInfo

# Job priorities: lower runs first.
PRIORITY_CHAT = 0
PRIORITY_EXPLAIN = 1
PRIORITY_BACKGROUND = 2


# ---------------------------------------------------------------- jobs


class JobKind(Enum):
    """Which job ended (JobFinished / JobFailed). The value keys jobs; `words` is what the
    user reads in a notice ("Explain all cancelled", not a class name)."""

    LOAD = "LoadModels"
    CHAT = "Chat"
    SET_CONVERSATION = "SetConversation"
    EXPLAIN = "Explain"
    EXPLAIN_ALL = "ExplainAll"
    STEER = "Steer"
    COMPARE = "Compare"
    EDIT_MESSAGE = "EditMessage"  # the branch jobs (core/branch_jobs.py)
    SWITCH_BRANCH = "SwitchBranch"
    LIST_BRANCHES = "ListBranches"
    EXPLAIN_ON_BRANCH = "ExplainOnBranch"
    ADOPT_BRANCHES = "AdoptBranches"
    EXPLAIN_PAIR = "ExplainWithPair"  # the extra pair (core/pair_jobs.py)
    CHECK_FIDELITY = "CheckFidelity"  # the quantisation self-check (core/nla/fidelity.py)

    @property
    def words(self) -> str:
        return _JOB_WORDS[self]

    @property
    def changes_conversation(self) -> bool:
        """Its end may change what a saved session holds (a steered continuation is saved)."""
        return self not in (JobKind.LOAD, JobKind.COMPARE, JobKind.LIST_BRANCHES, JobKind.CHECK_FIDELITY)

    @property
    def is_chat(self) -> bool:
        return self in (JobKind.CHAT, JobKind.SET_CONVERSATION)

    @property
    def is_explain(self) -> bool:
        return self in (JobKind.EXPLAIN, JobKind.EXPLAIN_ALL, JobKind.EXPLAIN_ON_BRANCH, JobKind.EXPLAIN_PAIR)


_JOB_WORDS = {JobKind.LOAD: "Loading the models", JobKind.CHAT: "Chat",
              JobKind.SET_CONVERSATION: "Opening the conversation", JobKind.EXPLAIN: "Explain",
              JobKind.EXPLAIN_ALL: "Explain all", JobKind.STEER: "Steer", JobKind.COMPARE: "Compare",
              JobKind.EDIT_MESSAGE: "Editing the message", JobKind.SWITCH_BRANCH: "Switching branch",
              JobKind.LIST_BRANCHES: "Listing branches", JobKind.EXPLAIN_ON_BRANCH: "Explain on a branch",
              JobKind.ADOPT_BRANCHES: "Opening the saved branches",
              JobKind.EXPLAIN_PAIR: "Explain with the extra pair", JobKind.CHECK_FIDELITY: "Fidelity self-check"}


@dataclass
class Job:
    """Base job. `key` identifies duplicates: a queued job with the same key is dropped."""

    kind: ClassVar[JobKind]

    @property
    def key(self) -> str:
        return self.kind.value

    @property
    def priority(self) -> int:
        return PRIORITY_BACKGROUND

    @property
    def cursor_index(self) -> int | None:
        """The token under the cursor this job explains (None: not a cursor job): a cursor
        job for another token makes a running one stale (scheduler.py cancels it)."""
        return None


@dataclass
class LoadModels(Job):
    """Load subject, AV and AR (the worker does this first, with progress)."""

    kind: ClassVar[JobKind] = JobKind.LOAD

    @property
    def priority(self) -> int:
        return PRIORITY_CHAT


@dataclass
class Chat(Job):
    """Append a user message, stream the subject's reply, capture every token."""

    kind: ClassVar[JobKind] = JobKind.CHAT

    text: str
    max_new_tokens: int = REPLY_TOKENS

    @property
    def key(self) -> str:
        return f"chat:{id(self)}"  # never deduplicated

    @property
    def priority(self) -> int:
        return PRIORITY_CHAT


@dataclass
class SetConversation(Job):
    """Replace the conversation with given messages (assistant turns teacher-forced)."""

    kind: ClassVar[JobKind] = JobKind.SET_CONVERSATION

    messages: list[Message]

    @property
    def priority(self) -> int:
        return PRIORITY_CHAT


@dataclass
class Explain(Job):
    """Explain the token at `index` (the one under the cursor). `samples` > 1 draws
    several and ranks them by AR score. A newer Explain supersedes a queued one."""

    kind: ClassVar[JobKind] = JobKind.EXPLAIN

    index: int
    sampling: Sampling = field(default_factory=Sampling)
    prompt: str | None = None
    samples: int = 1
    force: bool = False  # bypass the explanation cache (resample)

    @property
    def key(self) -> str:
        return "explain-cursor"

    @property
    def priority(self) -> int:
        return PRIORITY_EXPLAIN

    @property
    def cursor_index(self) -> int | None:
        return self.index


@dataclass
class ExplainAll(Job):
    """Explain many positions in the background, batched."""

    kind: ClassVar[JobKind] = JobKind.EXPLAIN_ALL

    indices: list[int]
    sampling: Sampling = field(default_factory=Sampling)
    prompt: str | None = None


@dataclass
class CheckFidelity(Job):
    """The quantisation self-check on the fixed conversation and the open one (a cached
    result unless `recheck`); answered by FidelityChecked."""

    kind: ClassVar[JobKind] = JobKind.CHECK_FIDELITY

    recheck: bool = False


# ---------------------------------------------------------------- events


@dataclass
class Event:
    pass


@dataclass
class LoadProgress(Event):
    """Model loading: `model` is 'subject' | 'av' | 'ar'; fraction in [0, 1]."""

    model: str
    fraction: float
    message: str = ""


@dataclass
class CaptureProgress(Event):
    """The subject is capturing a conversation in chunks: `done` of `total` tokens."""

    done: int
    total: int


@dataclass
class ModelsReady(Event):
    info: ModelInfo


@dataclass
class ChatStarted(Event):
    """The prompt tokens are known (already captured); the reply will stream."""

    tokens: list[TokenInfo]


@dataclass
class ChatDelta(Event):
    """New reply text since the last delta (batched every ~40 ms)."""

    text: str


@dataclass
class ConversationUpdated(Event):
    """The whole captured conversation after a chat turn or SetConversation.

    `activations` (numpy float32 [len(tokens), d_model], or None) rides along so the
    UI can save a session without reaching into the engine from another thread; the
    engine replaces (never mutates) the array, so sharing the reference is safe."""

    messages: list[Message]
    tokens: list[TokenInfo]
    activations: Any = field(default=None, compare=False, repr=False)


@dataclass
class ExplainStarted(Event):
    index: int


@dataclass
class ExplainDelta(Event):
    """Explanation text so far for `index` (replaces the previous delta)."""

    index: int
    text: str


@dataclass
class LogitLens(Event):
    """The subject's own top-3 at `index` read at every layer through the final norm and
    unembedding (layer 0 first), computed beside the AV when that token is explained."""

    index: int
    layers: list[list[Candidate]]


@dataclass
class ExplainDone(Event):
    """Finished explanations for one index, best first when several samples were drawn."""

    index: int
    explanations: list[Explanation]
    cached: bool = False


@dataclass
class ExplainAllProgress(Event):
    done: int
    total: int
    eta_s: float | None


@dataclass
class JobFinished(Event):
    kind: JobKind
    cancelled: bool = False


@dataclass
class JobFailed(Event):
    """A job failed. `message` is for the user; the worker keeps running."""

    kind: JobKind
    message: str


@dataclass
class GpuMemory(Event):
    """Memory of each card the models live on, from the worker after loading and after
    every job (the UI never asks torch itself)."""

    cards: list[CardMemory]


@dataclass
class QueueDepth(Event):
    depth: int


@dataclass
class FidelityChecked(Event):
    """The self-check's result; `info` is the models' ModelInfo carrying its verdict."""

    report: FidelityReport
    cached: bool
    info: ModelInfo
