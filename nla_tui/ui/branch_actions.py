"""Branches in the TUI (issue 26 item 1), a controller of NlaApp (ui/host.py): E edits the
message under the cursor into a new branch (the EditMessage job: the worker re-captures
from the first changed token and shows the branch), B lists the branches and switches
(SwitchBranch), P sets the parent's side of each token beside this one in the pane
(ExplainOnBranch fills the parent's explanation on demand). UiState folds the branch
events (state.py); the strip marks the tokens the edit changed.

Every key here does dictionary lookups and pushes a screen or a job; the work is the
worker's.
"""

from __future__ import annotations

from ..core.branch_jobs import EditMessage, ExplainOnBranch, SwitchBranch
from ..core.branch_tree import ROOT, check_label, edited_messages
from ..core.errors import InputError
from .host import AppHost
from .screens.branches import BranchesScreen, EditMessageDialog, message_role
from .state import Change


class Branching:
    def __init__(self, host: AppHost) -> None:
        self.host = host

    # ------------------------------------------------------------ E: edit a message

    def edit_dialog(self) -> None:
        host, st = self.host, self.host.state
        index = host.cursor_index()
        if index is None:
            return
        if host.needs_models("editing a message (the subject re-reads the conversation)"):
            return
        if st.reply is not None:
            host.notify("A reply is still streaming; wait for it or press Esc to cancel.", severity="warning")
            return
        turn = st.tokens[index].turn
        if not 0 <= turn < len(st.messages):
            host.notify(f"Token {index} is not in a message (<bos> or a turn marker): put the cursor on a "
                        "message's text, then E.", severity="warning", timeout=5)
            return
        message = st.messages[turn]
        # The shown branch, named (None before any tree: the worker's shown conversation).
        branch = st.current_branch if st.branches is not None else None

        def check(text: str, label: str) -> str | None:
            try:
                edited_messages(st.messages, turn, text)
                check_label(label)
            except InputError as e:
                return str(e)
            return None

        def done(result: tuple[str, str] | None) -> None:
            if result is None:
                return
            text, label = result
            host.submit(EditMessage(turn, text, parent=branch, label=label))
            host.notify(f"Editing message {turn}: re-reading from its first changed token…", timeout=3)

        host.push_screen(EditMessageDialog(turn, message_role(message), message.content, st.current_branch, check),
                         done)

    # ------------------------------------------------------------ B: the branch list

    def list_screen(self) -> None:
        host, tree = self.host, self.host.state.branches
        if tree is None or len(tree.branches) < 2:
            host.notify("No branches yet: E on a message edits it into a new branch.", timeout=4)
            return

        def done(branch: int | None) -> None:
            if branch is not None and branch != host.state.current_branch:
                host.submit(SwitchBranch(branch))

        host.push_screen(BranchesScreen(tree.snapshot()), done)

    # ------------------------------------------------------------ P: beside the parent

    def toggle_parent(self) -> None:
        host, st = self.host, self.host.state
        if st.parent_side(max(0, host.strip.cursor)) is None:
            host.notify("This is the conversation as captured (branch 0): it has no parent. "
                        "E on a message makes a branch, B lists them.", timeout=5)
            st.compare_parent = False
            return
        st.compare_parent = not st.compare_parent
        host.pane.show(host.strip.cursor)
        if st.compare_parent:
            self.explain_parent_side(host.strip.cursor)

    def explain_parent_side(self, index: int) -> None:
        """The parent's explanation of token `index`'s counterpart, when the comparison is
        shown and the parent has none yet (a recorded session only has what it has)."""
        host, st = self.host, self.host.state
        side = st.parent_side(index) if st.compare_parent and index >= 0 else None
        if side is None or st.read_only:
            return
        parent, j = side
        if j is not None and parent.best(j) is None:
            host.submit(ExplainOnBranch(parent.id, j, host.sampling(False), host.av_prompt))

    # ------------------------------------------------------------ events (after UiState.apply)

    def changed(self, change: Change) -> None:
        host, st = self.host, self.host.state
        if change.captured or change.branch:
            host.strip.set_changed(st.changed)
        if change.branch:
            host.strip.refresh()  # the branch's own explanations colour the strip
            host.strip.set_noted(st.noted_indices())
            host.minimap.update_map()
            host.find_changed()
            branch = st.shown_branch
            if st.current_branch == ROOT or branch is None:
                host.chat.show_note(None)
                st.compare_parent = False
            else:
                host.chat.show_note(f"branch {branch.id}: {branch.title} · from branch {branch.parent} · "
                                    f"{len(st.changed)} token(s) changed · B lists branches, P compares")
            if change.branch_created and branch is not None and st.diff is not None:
                host.notify(f"Branch {branch.id}: message {branch.edited} edited; re-read from token "
                            f"{branch.first_changed}, {len(st.changed)} token(s) changed (marked in the strip). "
                            "e explains here, P sets the parent beside it.", timeout=6)
                if st.changed:
                    host.strip.set_cursor(min(st.changed), user=False)
            host.pane.show(host.strip.cursor)
        if change.branch_explained is not None and st.compare_parent:
            side = st.parent_side(host.strip.cursor)
            if side is not None and (side[0].id, side[1]) == change.branch_explained:
                host.pane.show(host.strip.cursor)
