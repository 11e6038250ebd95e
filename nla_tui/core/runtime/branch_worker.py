"""EngineWorker's handlers for the branch jobs (core/branch_jobs.py), registered in
EngineWorker.handlers like the worker's own."""

from __future__ import annotations

from .. import events as ev
from ..errors import InputError
from ..branch_jobs import (AdoptBranches, BranchExplainDone, BranchList, BranchShown, EditMessage, ExplainOnBranch,
                           ListBranches, SwitchBranch)
from ..types import group_by_index


def shown_event(eng, created: bool) -> BranchShown:
    """The shown branch, the tree and its diff, copied for the UI thread."""
    tree = eng.branch_tree().snapshot()
    return BranchShown(tree.shown, tree, eng.branch_diff(), created)


class BranchJobs:
    """EngineWorker's handlers for the four jobs (registered by job type)."""

    def _shown(self, eng, created: bool) -> None:
        self.emit(ev.ConversationUpdated(list(eng.messages), list(eng.tokens), eng.activations))
        self.emit(shown_event(eng, created))

    def _do_EditMessage(self, job: EditMessage) -> None:
        eng = self._engine()
        eng.edit_message(job.message, job.text, job.parent, job.label, self._capture_progress(), self.cancel)
        self._shown(eng, created=True)

    def _do_SwitchBranch(self, job: SwitchBranch) -> None:
        eng = self._engine()
        eng.switch_branch(job.branch, self._capture_progress(), self.cancel)
        self._shown(eng, created=False)

    def _do_AdoptBranches(self, job: AdoptBranches) -> None:
        eng = self._engine()
        tree = eng.branch_tree()
        if [t.token_id for t in tree.root.tokens] != list(job.root_tokens):
            raise InputError("The saved branches belong to another conversation than the one held now "
                             "(its tokens differ), so they were not added. Open the session again.")
        have = tree.root.explanations
        group_by_index([e for e in job.root_explanations if e not in have.get(e.index, [])], into=have)
        eng.adopt_branches(job.branches, job.current, self.cancel)
        self._shown(eng, created=False)

    def _do_ListBranches(self, job: ListBranches) -> None:
        self.emit(BranchList(self._engine().branch_tree().snapshot()))

    def _do_ExplainOnBranch(self, job: ExplainOnBranch) -> None:
        eng = self._engine()
        tree = eng.branch_tree()
        branch = tree.get(job.branch)
        if branch.id == tree.current:
            self._explain(ev.Explain(job.index, job.sampling, job.prompt, force=job.force))
            return
        have = branch.kept_explanations(job.index, job.sampling, job.prompt)
        if have and not job.force:
            self.emit(BranchExplainDone(branch.id, job.index, have, cached=True))
            return
        exps = eng.explain_on_branch(branch.id, [job.index], job.sampling, job.prompt, None, self.cancel)
        if exps and not self.cancel.is_set():
            self.emit(BranchExplainDone(branch.id, job.index, exps))

