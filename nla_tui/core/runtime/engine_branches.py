"""The engine's branch tree (core/branch_tree.py): edit any message, switch between the
versions, explain a token on any of them. A mixin of Engine, kept out of engine.py.

The engine's conversation (messages, tokens, activations, explanations) is always the
shown branch's: `_show` points the engine at the branch's own lists and its explanations
dict, so explaining fills the branch. An edit re-captures only from the first token that
differs from the parent (Subject.capture with `parent`): the parent's rows before it are
copied bit for bit, and the decoder runs over the keys/values kept from the last capture.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator

import numpy as np

from ..branch_tree import ROOT, Branch, BranchDiff, BranchTree, check_label, edited_messages
from ..errors import InputError
from ..models.context import check_context
from ..types import Capture, Explanation, Sampling

CaptureProgress = Callable[[int, int], None]


class EngineBranches:
    """Engine's branch methods (the Engine supplies subject, info, caches and the
    conversation fields)."""

    branches: BranchTree | None

    # ------------------------------------------------------------ the shown branch

    def _show(self, branch: Branch, residuals=None) -> None:
        self.messages, self.tokens = branch.messages, branch.tokens
        self.activations = branch.activations
        self.explanations = branch.explanations  # the same dict: explaining fills the branch
        self.residuals, self._lens = residuals, {}
        self.branches.current = branch.id

    def _record(self, messages, tokens, cap: Capture, new_tree: bool) -> None:
        """A capture of the shown conversation (set_conversation, chat): a new tree, or the
        shown branch grown by a chat turn."""
        shown = None if new_tree or self.branches is None else self.branches.shown
        if shown is not None and shown.messages != list(messages[:len(shown.messages)]):
            shown = None  # not a continuation of the shown branch: a conversation of its own
        if shown is None:
            self.branches = BranchTree.of(messages, tokens, cap.activations)
            shown = self.branches.root
        else:
            shown.messages, shown.tokens, shown.activations = list(messages), tokens, cap.activations
            shown.explanations = {}
        self._show(shown, cap.residuals)

    def branch_tree(self) -> BranchTree:
        """The tree (a root only before anything is captured)."""
        if self.branches is None:
            self.branches = BranchTree.of(self.messages, self.tokens, self.activations, self.explanations)
        return self.branches

    # ------------------------------------------------------------ edit, switch

    def _capture_of(self, branch: Branch, progress: CaptureProgress | None = None,
                    cancel: threading.Event | None = None) -> Capture:
        """The branch's capture: held in memory, else from the activation cache, else
        re-captured (from its parent's where that is held), checked against its tokens."""
        ids = [t.token_id for t in branch.tokens]
        if branch.activations is not None:
            cap = _capture_from_tokens(branch)
            if branch is self.branches.shown and self.residuals is not None and len(self.residuals) == len(ids):
                cap.residuals = self.residuals
            return cap
        parent = None
        if branch.parent is not None and branch.parent in self.branches.branches:
            source = self.branches.branches[branch.parent]
            if source.activations is not None:
                parent = ([t.token_id for t in source.tokens], _capture_from_tokens(source))
        again, _, _ = self.subject.tokenize(branch.messages)
        if again != ids:
            raise InputError(f"These models tokenize branch {branch.id}'s conversation differently from the "
                             "models that made it, so its tokens cannot be captured again. Load the session's "
                             "own models.")
        cap = self.caches.capture(self.info, ids, lambda i: self.subject.capture(
            i, progress=progress, cancel=cancel, parent=parent))
        branch.activations = cap.activations
        return cap

    def edit_message(self, message: int, text: str, parent: int | None = None, label: str = "",
                     progress: CaptureProgress | None = None, cancel: threading.Event | None = None) -> Branch:
        """Branch `parent` (default: the shown branch) with message `message` replaced by
        `text`; capture the new branch from its first changed token and show it. The
        explanations of the new branch come lazily (explain / explain_on_branch)."""
        self._need_models()
        tree = self.branch_tree()
        source = tree.get(tree.current if parent is None else parent)
        messages = edited_messages(source.messages, message, text)  # before any model work
        label = check_label(label)
        ids, roles, turns = self.subject.tokenize(messages)
        if ids == [t.token_id for t in source.tokens]:
            raise InputError(f"The edit of message {message} leaves every token the same (the chat template "
                             "drops the difference): nothing to re-run.")
        check_context(len(ids), self.subject.context_limit, self.info.subject)
        parent_cap = self._capture_of(source, progress, cancel)
        parent_ids = [t.token_id for t in source.tokens]
        cap = self.caches.capture(self.info, ids, lambda i: self.subject.capture(
            i, progress=progress, cancel=cancel, parent=(parent_ids, parent_cap)))
        tokens = self.subject.token_infos(ids, roles, turns, cap)
        branch = tree.add(source.id, message, messages, tokens, cap.activations, label)
        self._show(branch, cap.residuals)
        self.last_recapture = {"branch": branch.id, "tokens": len(ids), "start": getattr(cap, "start", 0),
                               "first_changed": branch.first_changed}
        return branch

    def switch_branch(self, branch_id: int, progress: CaptureProgress | None = None,
                      cancel: threading.Event | None = None) -> Branch:
        """Show another branch (its activations from memory, the cache, or a re-capture)."""
        self._need_models()
        branch = self.branch_tree().get(branch_id)
        cap = self._capture_of(branch, progress, cancel)
        self._show(branch, cap.residuals)
        return branch

    def branch_diff(self, branch_id: int | None = None) -> BranchDiff | None:
        """The branch (default: the shown one) against its parent; None for the root."""
        tree = self.branch_tree()
        return tree.diff(tree.current if branch_id is None else branch_id)

    @contextlib.contextmanager
    def showing(self, branch_id: int, cancel: threading.Event | None = None) -> Iterator[Branch]:
        """Within the block the engine's conversation is branch `branch_id`'s; the shown
        branch comes back after (its activations stay held)."""
        tree = self.branch_tree()
        branch, back = tree.get(branch_id), tree.shown
        if branch is back:
            yield branch
            return
        saved = self.residuals
        cap = self._capture_of(branch, None, cancel)
        self._show(branch, cap.residuals)
        try:
            yield branch
        finally:
            self._show(back, saved)

    def explain_on_branch(self, branch_id: int, indices: list[int], sampling: Sampling = Sampling(),
                          prompt: str | None = None, on_delta=None,
                          cancel: threading.Event | None = None) -> list[Explanation]:
        """Explain tokens of any branch (kept in that branch), without changing the shown one."""
        with self.showing(branch_id, cancel):
            return self.explain(indices, sampling, prompt, on_delta, cancel)

    def adopt_branches(self, tree_branches: list[Branch], current: int = ROOT,
                       cancel: threading.Event | None = None) -> BranchTree:
        """Give the engine a saved session's branches (Session.branches) over the
        conversation it holds as the root, then show branch `current`."""
        tree = self.branch_tree()
        for b in tree_branches:
            if b.id == ROOT or b.parent not in {ROOT, *(x.id for x in tree_branches)}:
                raise InputError(f"Branch {b.id} of the session has no parent {b.parent} in it.")
            tree.branches[b.id] = b
        if current != ROOT:
            self.switch_branch(current, cancel=cancel)
        return tree


def _capture_from_tokens(branch: Branch) -> Capture:
    """A held branch as a Capture (its activations, top-k from its tokens: floats that
    came from float32 and go back exactly)."""
    k = max((len(t.top) for t in branch.tokens), default=0)
    ids = np.zeros((len(branch.tokens), k), np.int64)
    probs = np.zeros((len(branch.tokens), k), np.float32)
    for r, t in enumerate(branch.tokens):
        ids[r, :len(t.top)] = [c.token_id for c in t.top]
        probs[r, :len(t.top)] = [c.prob for c in t.top]
    return Capture(branch.activations, ids, probs, None)
