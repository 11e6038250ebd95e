"""Keeps the conversation on disk: ctrl+s, autosave after every job, on exit and on
SIGTERM / SIGHUP (a dropped SSH connection loses nothing).

The Session is built on the UI thread from what the UI already holds (ModelsReady's
ModelInfo, ConversationUpdated's messages, tokens and activations, ExplainDone's
explanations), so nothing here touches the engine or imports torch. Writing it is
core.store.autosave.Autosaver's job (one thread, one lock, the only writer), so a
100 MB activations file never freezes a key press.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from ..core.branch_tree import ROOT, BranchTree
from ..core.store.autosave import Autosaver
from ..core.store.session import SESSION_FILE, Session, now_iso
from .state import Change, UiState


def default_name(now: datetime | None = None) -> str:
    """What an unnamed session is called until the user names it (ctrl+s)."""
    return (now or datetime.now()).strftime("session-%Y-%m-%d-%H%M")


class SessionKeeper:
    """One per app. `observe` every Change; `request_save` after a finished job;
    `save_now` on exit / signals / ctrl+s (blocks until written)."""

    def __init__(self, state: UiState, root: str | Path | None = None) -> None:
        self.state = state
        self.named = False  # the user chose the name (ctrl+s) or opened a saved session
        self.created = now_iso()
        self.activations: Any = None  # numpy [T, d_model] for self.tokens, from the worker
        self.messages: list = []
        self.tokens: list = []  # the last *captured* conversation (ChatStarted tokens have no activations)
        self.saver = Autosaver(default_name(), root=root)
        self._changes = 0  # bumped by every change worth saving

    # ------------------------------------------------------------ bookkeeping

    @property
    def read_only(self) -> bool:
        """A session opened without models cannot change: never autosave (kept on the
        UiState, which the pane and the key handlers read too)."""
        return self.state.read_only

    @read_only.setter
    def read_only(self, value: bool) -> None:
        self.state.read_only = value

    @property
    def name(self) -> str:
        return self.saver.name

    @property
    def directory(self) -> Path | None:
        return self.saver.directory

    @property
    def last_saved(self) -> Path | None:
        return self.saver.last_saved

    @property
    def dirty(self) -> bool:
        return self._changes != self.saver.saved_change

    def observe(self, change: Change) -> bool:
        """Note what an event changed (after UiState applied it). True when a save is due."""
        if change.captured:
            st = self.state
            self.messages, self.tokens, self.activations = list(st.messages), list(st.tokens), st.activations
            self._changes += 1
        if change.explained or change.steered is not None or change.branch or change.branch_explained:
            self._changes += 1
        # Save once per finished job, not per ExplainDone of an explain-all batch.
        return change.ended is not None and change.ended.changes_conversation and self.dirty

    def changed_here(self) -> None:
        """A change made in the UI itself (a note), not by a job: worth saving."""
        self._changes += 1

    def adopt(self, session: Session, directory: Path | None) -> None:
        """The app now shows `session` (opened from disk): later saves go back there."""
        self.named, self.created = True, session.created
        self.messages, self.tokens = list(session.messages), list(session.tokens)
        self.activations = session.activations
        self.saver.adopt(session.name, directory, self._changes, session.generation)  # nothing new to write yet

    def mark_saved(self) -> None:
        """What is shown now needs no save (the demo's example): the next change does."""
        self.saver.saved_change = self._changes

    def snapshot(self) -> Session | None:
        """The session as the UI shows it now (UI thread only); None with nothing to save.
        With branches, the root is the session's own conversation and every other branch
        is kept beside it (Session.set_branches), whichever branch is shown."""
        st, tokens = self.state, self.tokens
        if st.info is None or not tokens:
            return None
        tree = st.tree_to_save()
        if tree is not None:
            return self._snapshot_tree(tree)
        acts = self.activations
        if acts is not None and getattr(acts, "shape", (0,))[0] != len(tokens):
            acts = None  # never pair tokens with another conversation's activations
        def kept(by_index):  # a token still the same token at the same position
            return [e for i in sorted(by_index) if i < len(tokens)
                    and st.tokens[i:i + 1] and st.tokens[i].token_id == tokens[i].token_id for e in by_index[i]]
        return Session(name=self.name, info=st.info, messages=list(self.messages),
                       tokens=list(tokens), explanations=kept(st.explanations), activations=acts,
                       steered=[b for b in st.steered if b.index < len(tokens)],
                       notes=[n for n in st.notes if n.branch is not None or n.end < len(tokens)],
                       extra_pair=st.pair, pair_explanations=kept(st.pair_explanations) if st.pair else [],
                       created=self.created)

    def _snapshot_tree(self, tree: BranchTree) -> Session:
        st, root = self.state, tree.root
        acts = root.activations
        if acts is not None and getattr(acts, "shape", (0,))[0] != len(root.tokens):
            acts = None
        sizes = {b.id: len(b.tokens) for b in tree.branches.values()}
        session = Session(name=self.name, info=st.info, messages=list(root.messages), tokens=list(root.tokens),
                          explanations=root.explanation_list(), activations=acts,
                          steered=[b for b in st.steered if b.index < sizes.get(b.branch or ROOT, 0)],
                          notes=[n for n in st.notes if n.branch is not None or n.end < len(root.tokens)],
                          created=self.created)
        if st.pair is not None:  # the extra pair's explanations of the root (branch 0)
            held = st.pair_explanations_of(root.tokens)
            session.extra_pair = st.pair
            session.pair_explanations = [e for i in sorted(held) if i < len(root.tokens) for e in held[i]]
        session.set_branches(tree)
        return session

    # ------------------------------------------------------------ saving

    def request_save(self) -> None:
        """Autosave in the background (UI thread)."""
        self.saver.request(self.snapshot(), self._changes)

    def save_now(self, only_if_dirty: bool = False) -> Path | None:
        """Write the current session and wait (UI thread). Errors: saver.last_error."""
        if only_if_dirty and not self.dirty:
            return None
        return self.saver.save_now(self.snapshot(), self._changes)

    def save_as(self, name: str, root: Path) -> Path | None:
        """ctrl+s with a name: save under root/slugify(name) (see Autosaver.save_as)."""
        old, was_named = self.directory, self.named
        self.named = True
        unnamed_autosave = not was_named and old is not None and (old / SESSION_FILE).exists()
        return self.saver.save_as(self.snapshot(), self._changes, root, name.strip(), unnamed_autosave)

    def rename(self, name: str) -> Path:
        """The browser renamed the open session (between two saves)."""
        self.named = True
        return self.saver.rename(name)

    def delete(self) -> None:
        """The browser deleted the open session: nothing is re-saved until the next change."""
        self.saver.delete(self._changes)
