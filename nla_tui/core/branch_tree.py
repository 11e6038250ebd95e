"""The conversation's branch tree (issue 26): edit any message and see how the model's
reading changes.

The root (id 0) is the conversation as captured. Editing message m of any branch with new
text makes a child: the parent's messages with message m replaced (the later messages are
kept, so a teacher-forced reply or an agent's next step is read again after the edit).
Each branch has its own tokens, activations (held in memory and in the on-disk activation
cache, never in session.json) and explanations (computed lazily, as the root's are).
`diff_branches` says which token positions an edit changed and pairs every other token
with its parent counterpart, so the explanations of both can be read side by side.

Plain data, no torch: the engine, the worker's events, sessions, exports and the UI share it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from .errors import InputError
from .types import Explanation, Message, TokenInfo, group_by_index

ROOT = 0
MAX_LABEL = 200  # characters of a branch's label


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Branch:
    """One version of the conversation. `edited` is the index of the message replaced in
    the parent's conversation (None for the root); `first_changed` the first token position
    whose id differs from the parent's when the branch was made (None for the root)."""

    id: int
    parent: int | None
    edited: int | None
    messages: list[Message]
    tokens: list[TokenInfo]
    # Per token index, newest first (the engine's order); flattened in session.json.
    explanations: dict[int, list[Explanation]] = field(default_factory=dict)
    created: str = ""
    label: str = ""
    first_changed: int | None = None
    # float32 [len(tokens), d_model] once captured in this process; None when only the
    # activation cache (or a re-capture) has it. Never written to session.json.
    activations: Any = field(default=None, compare=False, repr=False)

    @property
    def is_root(self) -> bool:
        return self.parent is None

    @property
    def title(self) -> str:
        """What a branch list shows: the label, else what the branch is."""
        if self.label:
            return self.label
        return "as captured" if self.is_root else f"message {self.edited} edited"

    def kept_explanations(self, index: int, sampling: Any, prompt: str | None) -> list[Explanation]:
        """This branch's explanations of token `index` made with `sampling` and `prompt` (what
        explaining it again would give back from memory); a token beyond the branch is an
        InputError. Shared by the local and the remote worker's ExplainOnBranch."""
        if not 0 <= index < len(self.tokens):
            n = len(self.tokens)
            raise InputError(f"Token {index} is out of range: branch {self.id} has {n} tokens (0..{n - 1}).")
        return [e for e in self.explanations.get(index, []) if e.sampling == sampling and e.prompt == prompt]

    def explanation_list(self) -> list[Explanation]:
        """Every explanation, by token index (as a session stores them)."""
        return [e for i in sorted(self.explanations) for e in self.explanations[i]]

    def best(self, index: int) -> Explanation | None:
        """The explanation to show for a token: highest fidelity among scored ones, else the newest."""
        held = self.explanations.get(index, [])
        scored = [e for e in held if e.score is not None]
        return max(scored, key=lambda e: e.score.fidelity) if scored else (held[0] if held else None)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "parent": self.parent, "edited": self.edited, "created": self.created,
                "label": self.label, "first_changed": self.first_changed,
                "conversation": [m.to_json() for m in self.messages],
                "tokens": [t.to_json() for t in self.tokens],
                "explanations": [e.to_json() for e in self.explanation_list()]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Branch":
        first = d.get("first_changed")
        return cls(id=int(d["id"]), parent=int(d["parent"]), edited=int(d["edited"]),
                   messages=[Message.from_json(m) for m in d.get("conversation", [])],
                   tokens=[TokenInfo.from_json(t) for t in d.get("tokens", [])],
                   explanations=group_by_index(Explanation.from_json(e) for e in d.get("explanations", [])),
                   created=str(d.get("created", "")), label=str(d.get("label", "")),
                   first_changed=None if first is None else int(first))


def edited_messages(messages: list[Message], index: int, text: str) -> list[Message]:
    """`messages` with message `index`'s text replaced: the edit a branch is made of.
    Checked here, before any model runs: the index, empty text, an unchanged text."""
    if isinstance(index, bool) or not isinstance(index, int):
        raise InputError(f"The message to edit must be given by its number, not {index!r}.")
    n = len(messages)
    if n == 0:
        raise InputError("There is no conversation to edit yet: chat or open a transcript first.")
    if not 0 <= index < n:
        raise InputError(f"Message {index} is out of range: the conversation has {n} message"
                         f"{'s' if n != 1 else ''} (0..{n - 1}).")
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"The new text for message {index} is empty: give the text the message should say.")
    old = messages[index]
    if text == old.content:
        raise InputError(f"The new text for message {index} is the same as its current text: nothing to re-run.")
    return messages[:index] + [replace(old, content=text)] + messages[index + 1:]


def check_label(label: str) -> str:
    if not isinstance(label, str) or len(label) > MAX_LABEL:
        raise InputError(f"A branch label is a text of at most {MAX_LABEL} characters.")
    return label.strip()


class BranchTree:
    """Every branch by id, and which one is shown (`current`). The engine holds one (its
    conversation is always the current branch's); sessions save it (store/session.py)."""

    def __init__(self, root: Branch, branches: list[Branch] = (), current: int = ROOT):
        self.branches: dict[int, Branch] = {ROOT: root}
        for b in branches:
            self.branches[b.id] = b
        self.current = current if current in self.branches else ROOT

    @classmethod
    def of(cls, messages: list[Message], tokens: list[TokenInfo], activations: Any = None,
           explanations: dict[int, list[Explanation]] | None = None) -> "BranchTree":
        """A tree holding only a root: the conversation as captured."""
        return cls(Branch(ROOT, None, None, list(messages), list(tokens), explanations if explanations is not None
                          else {}, created=_now(), activations=activations))

    @property
    def root(self) -> Branch:
        return self.branches[ROOT]

    @property
    def shown(self) -> Branch:
        return self.branches[self.current]

    def get(self, branch_id: int) -> Branch:
        try:
            return self.branches[branch_id]
        except (KeyError, TypeError):
            ids = ", ".join(str(i) for i in sorted(self.branches))
            raise InputError(f"There is no branch {branch_id!r}: the branches are {ids} (0 is the conversation "
                             "as captured).") from None

    def children(self, branch_id: int) -> list[Branch]:
        return [b for b in self.branches.values() if b.parent == branch_id]

    def lineage(self, branch_id: int) -> list[Branch]:
        """The branch and its ancestors, root first."""
        out, b = [], self.get(branch_id)
        while b is not None:
            out.append(b)
            b = None if b.parent is None else self.branches.get(b.parent)
        return out[::-1]

    def ordered(self) -> list[Branch]:
        """Depth first from the root, children oldest first: the order a branch list shows."""
        out: list[Branch] = []

        def walk(b: Branch) -> None:
            out.append(b)
            for c in sorted(self.children(b.id), key=lambda c: c.id):
                walk(c)
        walk(self.root)
        return out

    def depth(self, branch_id: int) -> int:
        return len(self.lineage(branch_id)) - 1

    def add(self, parent: int, edited: int, messages: list[Message], tokens: list[TokenInfo],
            activations: Any = None, label: str = "") -> Branch:
        """A new child of `parent` (not shown until the caller says so)."""
        source = self.get(parent)
        first = next((k for k, (a, b) in enumerate(zip(source.tokens, tokens)) if a.token_id != b.token_id),
                     min(len(source.tokens), len(tokens)))
        branch = Branch(max(self.branches) + 1, parent, edited, list(messages), list(tokens), {}, _now(),
                        check_label(label), first, activations)
        self.branches[branch.id] = branch
        return branch

    def snapshot(self) -> "BranchTree":
        """A copy for another thread (the UI): lists and dicts copied, arrays shared (the
        engine replaces an activations array, never mutates it)."""
        copies = {i: replace(b, messages=list(b.messages), tokens=list(b.tokens),
                             explanations={k: list(v) for k, v in b.explanations.items()})
                  for i, b in self.branches.items()}
        return BranchTree(copies[ROOT], [b for i, b in copies.items() if i != ROOT], self.current)

    def diff(self, branch_id: int) -> "BranchDiff | None":
        """The branch against its parent (None for the root)."""
        b = self.get(branch_id)
        return None if b.parent is None else diff_branches(self.get(b.parent), b)

    def side_by_side(self, branch_id: int, index: int) -> "TokenSide":
        """Token `index` of a branch beside its counterpart in the parent: both tokens and
        both best explanations (None where a side has none yet, or no counterpart)."""
        b = self.get(branch_id)
        if not 0 <= index < len(b.tokens):
            raise InputError(f"Token {index} is out of range: branch {branch_id} has {len(b.tokens)} tokens.")
        if b.parent is None:
            return TokenSide(branch_id, index, b.tokens[index].text, b.best(index), None, None, None, None)
        parent, d = self.get(b.parent), self.diff(branch_id)
        j = d.aligned.get(index)
        return TokenSide(branch_id, index, b.tokens[index].text, b.best(index), b.parent, j,
                         None if j is None else parent.tokens[j].text, None if j is None else parent.best(j))


@dataclass
class BranchDiff:
    """A branch against its parent, on token ids (difflib, as compare does for text).

    `changed`: the branch's positions inside an edited run (inserted or replaced tokens);
    `removed`: the parent's positions with no counterpart; `aligned`: every other branch
    position -> its parent position (the same token, possibly read differently after the
    edit; same-length replaced runs pair up position by position); `cos`: for aligned
    positions where both activations are known, cos(branch, parent): how far the edit
    moved the model's state there."""

    parent: int
    child: int
    first_changed: int | None
    changed: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    aligned: dict[int, int] = field(default_factory=dict)
    cos: dict[int, float] = field(default_factory=dict)

    def is_changed(self, index: int) -> bool:
        return index in set(self.changed)


def diff_branches(parent: Branch, child: Branch) -> BranchDiff:
    a = [t.token_id for t in parent.tokens]
    b = [t.token_id for t in child.tokens]
    d = BranchDiff(parent.id, child.id, None)
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            d.aligned.update(zip(range(j1, j2), range(i1, i2)))
            continue
        d.changed += range(j1, j2)
        d.removed += range(i1, i2)
        if op == "replace" and i2 - i1 == j2 - j1:
            d.aligned.update(zip(range(j1, j2), range(i1, i2)))
    d.first_changed = d.changed[0] if d.changed else (d.removed[0] if d.removed else None)
    if parent.activations is not None and child.activations is not None and d.aligned:
        import numpy as np

        pairs = sorted(d.aligned.items())
        x = np.asarray(child.activations, np.float64)[[k for k, _ in pairs]]
        y = np.asarray(parent.activations, np.float64)[[j for _, j in pairs]]
        cos = (x * y).sum(-1) / np.maximum(np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1), 1e-30)
        d.cos = {k: float(c) for (k, _), c in zip(pairs, cos)}
    return d


def diff_conversations(parent_tokens: list[TokenInfo], child_tokens: list[TokenInfo], parent_activations: Any = None,
                       child_activations: Any = None) -> BranchDiff:
    """diff_branches for two captured conversations that are not in one tree (the API's handles)."""
    return diff_branches(Branch(ROOT, None, None, [], parent_tokens, activations=parent_activations),
                         Branch(1, ROOT, None, [], child_tokens, activations=child_activations))


@dataclass
class TokenSide:
    """One token of a branch and its parent counterpart, with each side's best explanation
    (fve / cos in its `score`); parent fields are None for the root or an edited token
    with no counterpart."""

    branch: int
    index: int
    text: str
    explanation: Explanation | None
    parent: int | None
    parent_index: int | None
    parent_text: str | None
    parent_explanation: Explanation | None
