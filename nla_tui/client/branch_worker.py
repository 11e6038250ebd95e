"""RemoteWorker's handlers for the branch jobs (core/branch_jobs.py): E, B and P over
`nla-tui serve`, answered with the events the EngineWorker sends (runtime/branch_worker.py),
so the UI does not know the difference.

The tree lives here, in the TUI (as the engine holds it locally): every branch is a
conversation on the server under its own handle. An edit is POST /v1/edit on the parent's
handle (the server re-captures from the first changed token); the branch's activations
come back with it (POST /v1/activations), so the diff and its cos are computed here with
the same code as locally (BranchTree.diff). A branch whose handle the server dropped
(restart, memory budget) or never had (a saved session's branches) is captured again from
its messages, checked against its tokens.
"""

from __future__ import annotations

from typing import Any, Callable

from ..core import events as ev
from ..core.branch_jobs import (AdoptBranches, BranchExplainDone, BranchList, BranchShown, EditMessage,
                                ExplainOnBranch, ListBranches, SwitchBranch)
from ..core.branch_tree import ROOT, Branch, BranchTree, check_label, edited_messages
from ..core.captured import Conversation
from ..core.errors import InputError
from ..core.types import Explanation, group_by_index
from .http import ServerError


class RemoteBranches:
    """RemoteWorker's branch state and handlers (registered by job type in RemoteWorker)."""

    tree: BranchTree | None
    handles: dict[int, Conversation]  # branch id -> its conversation on the server

    def _branch_handlers(self) -> dict[type, Callable[[Any], None]]:
        return {EditMessage: self._edit_message, SwitchBranch: self._switch_branch, ListBranches: self._list_branches,
                ExplainOnBranch: self._explain_on_branch, AdoptBranches: self._adopt_branches}

    # ------------------------------------------------------------ the shown branch

    def _record(self, conversation: Conversation, activations: Any, new_tree: bool) -> None:
        """A capture of the shown conversation (SetConversation: a new tree; a chat turn: the
        shown branch grown, as Engine._record does)."""
        shown = None if new_tree or self.tree is None else self.tree.shown
        if shown is not None and shown.messages != list(conversation.messages[:len(shown.messages)]):
            shown = None  # not a continuation of the shown branch: a conversation of its own
        if shown is None:
            self.tree, self.handles = BranchTree.of(conversation.messages, conversation.tokens, activations), {}
            shown = self.tree.root
        else:
            shown.messages, shown.tokens, shown.activations = list(conversation.messages), list(conversation.tokens), \
                activations
            shown.explanations = {}
        self._show(shown, conversation)

    def _show(self, branch: Branch, conversation: Conversation) -> None:
        self.tree.current = branch.id
        self.handles[branch.id] = conversation
        self.conversation, self.activations = conversation, branch.activations
        self.explanations = branch.explanations  # the same dict: explaining fills the branch

    def _tree(self) -> BranchTree:
        if self.tree is None:  # nothing captured yet: an empty root (an edit then says so)
            self.tree, self.handles = BranchTree.of([], []), {}
        return self.tree

    def _send_shown(self, created: bool) -> None:
        shown = self.tree.shown
        self.emit(ev.ConversationUpdated(list(shown.messages), list(shown.tokens), shown.activations))
        copy = self.tree.snapshot()
        self.emit(BranchShown(copy.shown, copy, self.tree.diff(copy.current), created))

    # ------------------------------------------------------------ a branch on the server

    def _held(self, branch: Branch) -> Conversation:
        """The branch's conversation on the server, with its activations here: the handle
        it was made under, else captured again from its messages (checked token by token)."""
        conversation = self.handles.get(branch.id)
        if conversation is None:
            conversation = self._blocking(lambda c: c.capture(branch.messages))
            if [t.token_id for t in conversation.tokens] != [t.token_id for t in branch.tokens]:
                raise InputError(f"The server's models tokenize branch {branch.id}'s conversation differently from "
                                 "the models that made it, so it cannot be captured there. Attach to a server with "
                                 "the session's own models, or run it locally (nla-tui without --server).")
            self.handles[branch.id] = conversation
            if branch is self.tree.shown:
                self.conversation = conversation
        if branch.activations is None:
            branch.activations = self._blocking(lambda c: c.activations(conversation))
        return conversation

    def _on_branch(self, branch: Branch, call: Callable[[Conversation], Any]) -> Any:
        """`call` with the branch's conversation; if the server dropped it (404), capture it
        again once and retry."""
        try:
            return call(self._held(branch))
        except ServerError as e:
            if e.status != 404:
                raise
        self.handles.pop(branch.id, None)
        return call(self._held(branch))

    # ------------------------------------------------------------ jobs

    def _edit_message(self, job: EditMessage) -> None:
        tree = self._tree()
        source = tree.get(tree.current if job.parent is None else job.parent)
        edited_messages(source.messages, job.message, job.text)  # refused here, before any request
        label = check_label(job.label)
        edited = self._on_branch(source, lambda held: self._blocking(lambda c: c.edit(held, job.message, job.text)))
        activations = self._blocking(lambda c: c.activations(edited))
        branch = tree.add(source.id, job.message, list(edited.messages), list(edited.tokens), activations, label)
        self._show(branch, edited)
        self._send_shown(created=True)

    def _switch_branch(self, job: SwitchBranch) -> None:
        branch = self._tree().get(job.branch)
        self._show(branch, self._held(branch))
        self._send_shown(created=False)

    def _list_branches(self, job: ListBranches) -> None:
        self.emit(BranchList(self._tree().snapshot()))

    def _explain_on_branch(self, job: ExplainOnBranch) -> None:
        tree = self._tree()
        branch = tree.get(job.branch)
        if branch.id == tree.current:
            self._explain(ev.Explain(job.index, job.sampling, job.prompt, force=job.force))
            return
        have = branch.kept_explanations(job.index, job.sampling, job.prompt)
        if have and not job.force:
            self.emit(BranchExplainDone(branch.id, job.index, have, cached=True))
            return
        # Nothing streams for a branch not shown (as locally): only the finished explanations are kept.
        exps = self._on_branch(branch, lambda held: [x for x in self._streamed(
            lambda c: c.explain_stream(held, [job.index], job.sampling, job.prompt)) if isinstance(x, Explanation)])
        if exps and not self.cancel.is_set():
            group_by_index(exps, into=branch.explanations, newest_first=True)
            self.emit(BranchExplainDone(branch.id, job.index, exps))

    def _adopt_branches(self, job: AdoptBranches) -> None:
        tree = self._tree()
        if [t.token_id for t in tree.root.tokens] != list(job.root_tokens):
            raise InputError("The saved branches belong to another conversation than the one held now "
                             "(its tokens differ), so they were not added. Open the session again.")
        have = tree.root.explanations
        group_by_index([e for e in job.root_explanations if e not in have.get(e.index, [])], into=have)
        ids = {ROOT, *(b.id for b in job.branches)}
        for b in job.branches:
            if b.id == ROOT or b.parent not in ids:
                raise InputError(f"Branch {b.id} of the session has no parent {b.parent} in it.")
        for b in job.branches:
            tree.branches[b.id] = b
        if job.current != ROOT:
            branch = tree.get(job.current)
            self._show(branch, self._held(branch))
        self._send_shown(created=False)
