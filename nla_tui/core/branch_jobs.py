"""Worker jobs and events for the branch tree (core/branch_tree.py): edit a message into a
new branch, switch branch, list branches, explain a token on any branch. Plain dataclasses
like events.py (torch-free: the UI imports them); EngineWorker runs them in
runtime/branch_worker.py, ReplayWorker serves what a saved session holds.

Events, in the order the worker sends them:
- EditMessage / SwitchBranch: CaptureProgress (a long re-capture), then ConversationUpdated
  with the branch's messages, tokens and activations, then BranchShown (the branch with its
  explanations, the whole tree, the diff against its parent). A UI replaces the explanations
  it shows with BranchShown.branch.explanations: positions after an edit keep their token
  ids but not their activations, so a kept explanation would belong to the other branch.
- AdoptBranches: like SwitchBranch (the saved branches join the tree, then one is shown).
- ListBranches: BranchList.
- ExplainOnBranch: on the shown branch, exactly what Explain sends (ExplainStarted,
  ExplainDelta, ExplainDone); on another branch one BranchExplainDone (nothing streams).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .branch_tree import Branch, BranchDiff, BranchTree
from .events import PRIORITY_CHAT, PRIORITY_EXPLAIN, Event, Job, JobKind
from .types import Explanation, Sampling


@dataclass
class EditMessage(Job):
    """Branch `parent` (None: the shown branch) with message `message` replaced by `text`,
    re-capture from the first changed token and show the new branch."""

    kind: ClassVar[JobKind] = JobKind.EDIT_MESSAGE

    message: int
    text: str
    parent: int | None = None
    label: str = ""

    @property
    def key(self) -> str:
        return f"edit:{id(self)}"  # never deduplicated: each edit is its own branch

    @property
    def priority(self) -> int:
        return PRIORITY_CHAT


@dataclass
class SwitchBranch(Job):
    """Show branch `branch` (a newer switch replaces a queued one)."""

    kind: ClassVar[JobKind] = JobKind.SWITCH_BRANCH

    branch: int

    @property
    def key(self) -> str:
        return "switch-branch"

    @property
    def priority(self) -> int:
        return PRIORITY_CHAT


@dataclass
class ListBranches(Job):
    """Send the branch tree (BranchList)."""

    kind: ClassVar[JobKind] = JobKind.LIST_BRANCHES

    @property
    def priority(self) -> int:
        return PRIORITY_CHAT


@dataclass
class ExplainOnBranch(Job):
    """Explain token `index` of branch `branch` (e.g. the parent's side of a diff) without
    switching to it. A newer request for the same branch replaces a queued one."""

    kind: ClassVar[JobKind] = JobKind.EXPLAIN_ON_BRANCH

    branch: int
    index: int
    sampling: Sampling = field(default_factory=Sampling)
    prompt: str | None = None
    force: bool = False  # bypass what the branch and the explanation cache hold

    @property
    def key(self) -> str:
        return f"explain-branch:{self.branch}"

    @property
    def priority(self) -> int:
        return PRIORITY_EXPLAIN


@dataclass
class AdoptBranches(Job):
    """A saved session's branches (Session.branches) join the tree over the conversation the
    worker holds (its root, from SetConversation); then branch `current` is shown.
    `root_tokens`: the root's token ids when saved (refused if the held conversation differs);
    `root_explanations`: the root's saved explanations, kept in the root so switching back
    to it shows them."""

    kind: ClassVar[JobKind] = JobKind.ADOPT_BRANCHES

    branches: list[Branch]
    current: int
    root_tokens: list[int]
    root_explanations: list[Explanation] = field(default_factory=list)

    @property
    def priority(self) -> int:
        return PRIORITY_CHAT


@dataclass
class BranchShown(Event):
    """The branch now shown (a copy: its messages, tokens and explanations per token), the
    whole tree (a snapshot), and its diff against its parent (None for the root).
    `created`: a new branch from EditMessage, else a switch."""

    branch: Branch
    tree: BranchTree
    diff: BranchDiff | None
    created: bool = False


@dataclass
class BranchList(Event):
    tree: BranchTree


@dataclass
class BranchExplainDone(Event):
    """Explanations of token `index` on branch `branch`, which is not the one shown."""

    branch: int
    index: int
    explanations: list[Explanation]
    cached: bool = False
