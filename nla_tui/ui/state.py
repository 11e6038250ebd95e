"""What the UI knows about the conversation, folded from worker events.

Pure Python (no Textual) so the folding rules are unit-testable and the widgets
only read from it. One instance lives on the app; the app applies every core
event here first (the only place events are unpacked), then redraws from the Change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core import events as ev
from ..core.branch_jobs import BranchExplainDone, BranchList, BranchShown
from ..core.branch_tree import ROOT, Branch, BranchDiff, BranchTree
from ..core.notes import Note
from ..core.pair_jobs import PairExplainDelta, PairExplainDone, PairInfo, PairReady
from ..core.fallbacks import is_near_duplicate_warning, near_duplicate_warning, near_duplicates
from ..core.steer_jobs import CompareDone, SteerDone, SteerProgress
from ..core.steer_results import Comparison, SteerResult
from ..core.caveats import SPECIAL_ROLES, Caveat, is_outlier, median_norm, position_caveats, verdict
from ..core.types import Candidate, CardMemory, Explanation, Message, ModelInfo, TokenInfo, group_by_index

__all__ = ["SPECIAL_ROLES", "Change", "UiState", "token_key"]


def token_key(tokens: list[TokenInfo]) -> tuple[int, ...]:
    """A conversation as the subject saw it: its token ids (the same ids, the same activations)."""
    return tuple(t.token_id for t in tokens)


@dataclass
class Change:
    """What one worker event changed. UiState.apply reads the event once and says what
    changed; the app redraws from this and the session keeper decides on saving from it,
    so no other code unpacks events."""

    chat_started: bool = False  # prompt tokens known, a reply will stream
    tokens: bool = False  # the token list was replaced
    captured: bool = False  # a captured conversation arrived (worth saving)
    reply: str = ""  # reply text that streamed in
    index: int | None = None  # the explanation state of this token changed
    explained: bool = False  # a finished explanation arrived (worth saving)
    progress: ev.ExplainAllProgress | None = None
    capture: ev.CaptureProgress | None = None  # chunked capture of a long conversation
    ended: ev.JobKind | None = None  # a job finished or failed
    failure: str | None = None  # ...with this message for the user
    cancelled: bool = False
    models: bool = False  # models ready
    steered: SteerResult | None = None  # a steered continuation arrived (worth saving)
    comparison: Comparison | None = None  # a comparison of two tokens arrived (shown, not saved)
    steer_progress: SteerProgress | None = None  # how far a steer / compare has got
    branch: bool = False  # another branch is shown (an edit made it, or a switch)
    branch_created: bool = False  # ...and an edit made it just now
    branches: bool = False  # the branch tree arrived (the list to switch between)
    branch_explained: tuple[int, int] | None = None  # (branch, index) of a branch not shown, explained
    fidelity: ev.FidelityChecked | None = None  # the self-check's result arrived (shown in a dialog)


@dataclass
class UiState:
    info: ModelInfo | None = None
    messages: list[Message] = field(default_factory=list)
    tokens: list[TokenInfo] = field(default_factory=list)
    # Finished explanations per token index, best first (several when sampled).
    explanations: dict[int, list[Explanation]] = field(default_factory=dict)
    # The logit lens per token index (layer 0 first, top-3 each), as the worker sent it.
    lens: dict[int, list[list[Candidate]]] = field(default_factory=dict)
    # warnings()'s cache: near-duplicate positions and the explanations they were found over.
    _duplicates: dict[int, int] = field(default_factory=dict, repr=False, compare=False)
    _duplicates_of: tuple = field(default=(), repr=False, compare=False)
    # Text streaming in for an index being explained right now.
    partial: dict[int, str] = field(default_factory=dict)
    explaining: int | None = None
    reply: str | None = None  # assistant text streaming in; None when not chatting
    load: dict[str, float] = field(default_factory=dict)  # model -> fraction
    load_message: str = ""
    load_failed: str | None = None  # why the models did not load (the app stays usable)
    queue_depth: int = 0
    all_progress: ev.ExplainAllProgress | None = None
    capture_progress: ev.CaptureProgress | None = None  # a long conversation being captured
    median_norm: float = 0.0
    # numpy [T, d_model] from the last ConversationUpdated (for saving sessions);
    # typed loosely so this module needs no numpy import.
    activations: object | None = None
    steered: list[SteerResult] = field(default_factory=list)  # steered continuations
    notes: list[Note] = field(default_factory=list)  # the researcher's notes on tokens (core/notes.py)
    gpu_memory: list[CardMemory] = field(default_factory=list)  # per card, from the worker
    # The conversation's branch tree (core/branch_tree.py), as the worker last sent it; None
    # until a branch exists (or a saved session brings one). Its shown branch's explanations
    # are `explanations` above (the UI's copy is the current one); the others' are the tree's.
    branches: BranchTree | None = None
    diff: BranchDiff | None = None  # the shown branch against its parent (None: the root)
    changed: frozenset[int] = frozenset()  # the shown branch's tokens an edit changed (diff marks)
    compare_parent: bool = False  # P: the pane sets the parent's side of each token beside this one
    # A saved session's tree while the worker captures its conversation (before AdoptBranches
    # shows a branch): kept when that capture arrives, so a failed adoption loses nothing.
    adopting: BranchTree | None = None
    # The extra AV/AR pair (--extra-pair; core/pair_jobs.py), its finished explanations and
    # text streaming in, per token index; kept apart from the main pair's. `pair_shown`: the
    # pane shows its section (2 on an explained token toggles it).
    pair: PairInfo | None = None
    pair_explanations: dict[int, list[Explanation]] = field(default_factory=dict)
    pair_partial: dict[int, str] = field(default_factory=dict)
    pair_shown: bool = True
    # The extra pair's explanations of conversations not shown now (another branch), by the
    # exact token ids they were made on (the same ids, the same activations): a branch shown
    # again gets its own back, never another's.
    pair_stash: dict[tuple[int, ...], dict[int, list[Explanation]]] = field(default_factory=dict)
    # A session opened without models (nla-tui open): only what was recorded can be shown,
    # so keys that need the models are refused up front and the pane offers L instead of e.
    read_only: bool = False

    # ------------------------------------------------------------ folding

    def apply(self, event: ev.Event) -> Change:
        """Fold one core event into the state; return what changed."""
        c = Change()
        if isinstance(event, ev.LoadProgress):
            self.load[event.model] = event.fraction
            self.load_message = event.message
        elif isinstance(event, ev.ModelsReady):
            self.info = event.info
            self.load = {}
            self.load_message = ""
            c.models = True
        elif isinstance(event, ev.GpuMemory):
            self.gpu_memory = list(event.cards)
        elif isinstance(event, ev.ChatStarted):
            self.set_tokens(event.tokens)
            self.reply = ""
            c.chat_started = c.tokens = True
        elif isinstance(event, ev.ChatDelta):
            self.reply = (self.reply or "") + event.text
            c.reply = event.text
        elif isinstance(event, ev.ConversationUpdated):
            self.capture_progress = None
            self.messages = list(event.messages)
            self.stash_pair_explanations()
            self.set_tokens(event.tokens)
            self.activations = event.activations
            chatting, self.reply = self.reply is not None, None
            self._follow_branch(event, chatting)
            c.tokens = c.captured = True
        elif isinstance(event, ev.ExplainStarted):
            self.explaining = event.index
            self.partial[event.index] = ""
            c.index = event.index
        elif isinstance(event, ev.ExplainDelta):
            self.partial[event.index] = event.text
            c.index = event.index
        elif isinstance(event, ev.LogitLens):
            self.lens[event.index] = event.layers
            c.index = event.index
        elif isinstance(event, ev.ExplainDone):
            self.partial.pop(event.index, None)
            if self.explaining == event.index:
                self.explaining = None
            if event.explanations:
                self.explanations[event.index] = list(event.explanations)
            c.index, c.explained = event.index, True
        elif isinstance(event, PairReady):
            self.pair = event.pair
            c.models = True
        elif isinstance(event, PairExplainDelta):
            self.pair_partial[event.index] = event.text
            c.index = event.index
        elif isinstance(event, PairExplainDone):
            self.pair_partial.pop(event.index, None)
            if event.explanations:
                self.pair_explanations[event.index] = list(event.explanations)
            c.index, c.explained = event.index, True
        elif isinstance(event, ev.FidelityChecked):
            self.info = event.info  # now carrying the verdict (status line, saved sessions, exports)
            c.fidelity = event
        elif isinstance(event, ev.CaptureProgress):
            self.capture_progress = None if event.done >= event.total else event
            c.capture = event
        elif isinstance(event, ev.ExplainAllProgress):
            self.all_progress = None if event.done >= event.total else event
            c.progress = event
        elif isinstance(event, (ev.JobFinished, ev.JobFailed)):
            kind = c.ended = event.kind
            c.failure = event.message if isinstance(event, ev.JobFailed) else None
            c.cancelled = isinstance(event, ev.JobFinished) and event.cancelled
            ended_badly = c.failure is not None or c.cancelled
            if kind is ev.JobKind.EXPLAIN_ALL:
                self.all_progress = None
            if kind is ev.JobKind.ADOPT_BRANCHES:
                self.adopting = None  # shown, or refused: the tree held stays either way
            if kind is ev.JobKind.LOAD and c.failure is not None:
                self.load_failed = c.failure
            if kind.is_chat and ended_badly:
                self.reply = None
            if kind.is_explain and ended_badly:
                self.partial.clear()
                self.pair_partial.clear()
                self.explaining = None
        elif isinstance(event, SteerDone):
            self.steered.append(event.result)
            c.steered = event.result
        elif isinstance(event, CompareDone):
            c.comparison = event.comparison
        elif isinstance(event, SteerProgress):
            c.steer_progress = event
        elif isinstance(event, BranchShown):
            self.pair_explanations = dict(self.pair_stash.get(token_key(event.branch.tokens), {}))
            self.pair_partial = {}
            self.branches, self.diff, self.adopting = event.tree, event.diff, None
            self.changed = frozenset(event.diff.changed) if event.diff is not None else frozenset()
            # The branch's own explanations, not the ones held: after an edit the later
            # tokens keep their ids but not their activations (core/branch_jobs.py).
            self.explanations = {i: list(v) for i, v in event.branch.explanations.items()}
            self.partial.clear()
            self.explaining = None
            c.branch, c.branch_created, c.branches = True, event.created, True
        elif isinstance(event, BranchList):
            self.branches = event.tree
            c.branches = True
        elif isinstance(event, BranchExplainDone):
            if self.branches is not None and event.branch in self.branches.branches:
                self.branches.branches[event.branch].explanations[event.index] = list(event.explanations)
                c.branch_explained = (event.branch, event.index)
        elif isinstance(event, ev.QueueDepth):
            self.queue_depth = event.depth
        return c

    def _follow_branch(self, event: ev.ConversationUpdated, chatting: bool) -> None:
        """A captured conversation. A chat turn grows the shown branch (as the engine's
        does). A saved session's conversation being captured keeps its tree (`adopting`:
        AdoptBranches gives the engine the branches next). Anything else (an edit, a switch,
        another transcript) is no branch of the tree held: the BranchShown that follows an
        edit or a switch brings the engine's tree back, a new conversation has none."""
        tree, messages = self.branches, list(event.messages)
        if tree is not None and chatting and tree.shown.messages == messages[:len(tree.shown.messages)]:
            shown = tree.shown
            shown.messages, shown.tokens, shown.activations = messages, list(event.tokens), event.activations
            return
        adopting = self.adopting
        if adopting is not None and adopting.root.messages == messages:
            adopting.current = ROOT
            adopting.root.activations = event.activations
            self.branches, self.diff, self.changed = adopting, None, frozenset()
            return
        self.branches, self.diff, self.changed = None, None, frozenset()

    def show_session(self, session) -> None:
        """Show a saved session (ctrl+o with live models): its conversation, capture and
        recorded explanations, before the engine has recaptured it."""
        self.messages = list(session.messages)
        self.set_tokens(session.tokens)
        self.activations = session.activations
        self.reply = None
        self.explanations, self.partial = group_by_index(session.explanations), {}
        # Its branches (shown from the root, as the engine holds it until AdoptBranches).
        tree = session.branch_tree() if session.branches else None
        if tree is not None:
            tree.current = ROOT
        self.branches, self.diff, self.changed = tree, None, frozenset()
        self.pair_explanations, self.pair_partial = group_by_index(session.pair_explanations), {}
        self.pair_stash = {}
        if session.extra_pair is not None:
            self.pair = session.extra_pair

    PAIR_STASH_MAX = 32  # conversations whose extra-pair explanations are kept aside

    def stash_pair_explanations(self) -> None:
        """Keep the extra pair's explanations of the conversation shown now, before another
        replaces it (a branch switch sends the new conversation first, BranchShown second)."""
        if self.pair is None or not self.pair_explanations:
            return
        self.pair_stash[token_key(self.tokens)] = dict(self.pair_explanations)
        while len(self.pair_stash) > self.PAIR_STASH_MAX:
            self.pair_stash.pop(next(iter(self.pair_stash)))

    def pair_explanations_of(self, tokens: list[TokenInfo]) -> dict[int, list[Explanation]]:
        """The extra pair's explanations of a conversation with exactly these tokens."""
        return self.pair_explanations if token_key(tokens) == token_key(self.tokens) else \
            self.pair_stash.get(token_key(tokens), {})

    def set_tokens(self, tokens: list[TokenInfo]) -> None:
        # A changed prefix invalidates explanations: keep only those whose token
        # is still the same token at the same position.
        old = self.tokens
        keep = {
            i for i in self.explanations
            if i < len(old) and i < len(tokens) and old[i].token_id == tokens[i].token_id
        }
        self.explanations = {i: v for i, v in self.explanations.items() if i in keep}
        self.pair_explanations = {i: v for i, v in self.pair_explanations.items() if i in keep}
        same = next((i for i, (a, b) in enumerate(zip(old, tokens)) if a.token_id != b.token_id), min(len(old), len(tokens)))
        self.lens = {i: v for i, v in self.lens.items() if i < same}  # the lens reads the whole prefix
        self.tokens = list(tokens)
        self.median_norm = median_norm(tokens)

    # ------------------------------------------------------------ queries

    @property
    def untrained_av(self) -> bool:
        return bool(self.info and self.info.untrained_av)

    @property
    def pair_note(self) -> str:
        """What the loaded pair is (nla-tui's trained demo pair), or "" (hub pairs)."""
        return (self.info.pair_note if self.info else "") or ""

    # ------------------------------------------------------------ branches

    @property
    def current_branch(self) -> int:
        """The id of the branch shown (0, the root, without a tree)."""
        return self.branches.current if self.branches is not None else ROOT

    @property
    def shown_branch(self) -> Branch | None:
        return self.branches.shown if self.branches is not None else None

    @property
    def note_branch(self) -> int | None:
        """What a note on the shown tokens records as its branch (None: the root)."""
        return None if self.current_branch == ROOT else self.current_branch

    def tree_to_save(self) -> BranchTree | None:
        """The tree with the shown branch as the UI holds it now (its newest explanations);
        None while there is no branch besides the root."""
        tree = self.branches
        if tree is None or len(tree.branches) < 2:
            return None
        out = tree.snapshot()
        out.shown.explanations = {i: list(v) for i, v in self.explanations.items()}
        return out

    def parent_side(self, index: int) -> tuple[Branch, int | None] | None:
        """The parent branch of the shown one and token `index`'s counterpart there (None:
        an edited token with none); None on the root. A dict lookup: cheap per key."""
        tree, diff = self.branches, self.diff
        if tree is None or diff is None or diff.parent not in tree.branches or diff.child != tree.current:
            return None
        return tree.branches[diff.parent], diff.aligned.get(index)

    def notes_at(self, index: int) -> list[Note]:
        """The notes on the shown branch covering token `index`."""
        mine = self.note_branch
        return [n for n in self.notes if n.branch == mine and n.covers(index)]

    def noted_indices(self) -> set[int]:
        n_tokens, mine = len(self.tokens), self.note_branch
        return {i for n in self.notes if n.branch == mine for i in range(n.start, min(n.end, n_tokens - 1) + 1)}

    def best(self, index: int) -> Explanation | None:
        found = self.explanations.get(index)
        return found[0] if found else None

    def warnings(self, index: int) -> list[str]:
        """The best explanation's warnings, the cross-position fallback (core/fallbacks.py)
        made current over every explanation held: one written alone (`e`) learns here that
        other tokens got the same text. Recomputed only when the held explanations change."""
        best = self.best(index)
        if best is None:
            return []
        held = tuple((i, id(es[0])) for i, es in self.explanations.items() if es)
        if held != self._duplicates_of:
            bests = [es[0] for es in self.explanations.values() if es]
            flagged = near_duplicates(bests, {t.index: t.text for t in self.tokens})
            self._duplicates = {bests[r].index: n for r, n in flagged.items()}
            self._duplicates_of = held
        out = [w for w in best.warnings if not is_near_duplicate_warning(w)]
        if index in self._duplicates:
            out.append(near_duplicate_warning(self._duplicates[index]))
        return out

    def is_outlier(self, index: int) -> bool:
        return is_outlier(self.tokens[index], self.median_norm)

    def caveats(self, index: int) -> list[Caveat]:
        """Why this position's explanation should not be trusted (core.caveats: the same
        list the run table and the exports show)."""
        return position_caveats(self.tokens, index, self.median_norm)

    def verdict(self, ex: Explanation) -> str:
        """The label shown beside an explanation's score: never "good" at a flagged position."""
        return verdict(ex.score, self.caveats(ex.index) if 0 <= ex.index < len(self.tokens) else [])

    def explained_count(self) -> int:
        return len(self.explanations)

    def turn_of_role(self, turn: int) -> str:
        """The role shown for a turn: the message's role, 'bos' for turn -1."""
        if turn < 0:
            return "bos"
        if turn < len(self.messages):
            m = self.messages[turn]
            if m.role == "assistant":
                return "model" if m.content.strip() or not m.tool_calls else "tool_call"
            return "tool_result" if m.role == "tool" else m.role
        for t in self.tokens:
            if t.turn == turn and t.role not in SPECIAL_ROLES:
                return t.role
        return "model" if self.reply is not None else "user"
