"""The whole input checked and counted before any weights load: tokens per conversation
(the subject's tokenizer, the same tag_tokens the engine captures with), context limits,
positions per the selection, shards, and what it will cost."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import InputError
from .reader import Corpus, Conversation, Problems
from .selection import Selection, planned_count, select_positions

DEFAULT_SHARD_POSITIONS = 256


@dataclass
class PlannedConversation:
    conversation: Conversation
    ids: list[int]  # the subject's token ids: the capture must give the same ones
    n_positions: int

    @property
    def n_tokens(self) -> int:
        return len(self.ids)


@dataclass
class Plan:
    items: list[PlannedConversation]
    shards: list[list[int]]  # conversation numbers (into items), consecutive, in input order
    selection: Selection
    shard_positions: int
    shard_rows: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.shard_rows = [sum(self.items[c].n_positions for c in s) for s in self.shards]

    @property
    def n_tokens(self) -> int:
        return sum(p.n_tokens for p in self.items)

    @property
    def n_positions(self) -> int:
        return sum(p.n_positions for p in self.items)

    def shard_starts(self) -> list[int]:
        """The sweep-wide number of each shard's first position (what --limit counts)."""
        out, n = [], 0
        for r in self.shard_rows:
            out.append(n)
            n += r
        return out

    def to_json(self) -> dict:
        """What the manifest records of the plan: enough to check a resumed run is the same job."""
        return {"conversations": len(self.items), "tokens": self.n_tokens, "positions": self.n_positions,
                "shard_positions": self.shard_positions,
                "shards": [{"conversations": [self.items[c].conversation.id for c in s], "rows": r}
                           for s, r in zip(self.shards, self.shard_rows)]}


def longest_conversation(plan: Plan) -> int | None:
    """Tokens of the plan's longest conversation (None for an empty plan)."""
    return max((p.n_tokens for p in plan.items), default=None)


def pack_shards(counts: list[int], shard_positions: int) -> list[list[int]]:
    """Consecutive conversations per shard until it holds at least `shard_positions` positions
    (a conversation is never split: its other positions are the specificity control's pool)."""
    shards, cur, n = [], [], 0
    for i, c in enumerate(counts):
        cur.append(i)
        n += c
        if n >= shard_positions:
            shards.append(cur)
            cur, n = [], 0
    if cur:
        shards.append(cur)
    return shards


def make_plan(corpus: Corpus, selection: Selection, tokenizer, context_limit: int | None, subject: str,
              shard_positions: int = DEFAULT_SHARD_POSITIONS) -> Plan:
    from ..models.context import check_context
    from ..models.conversation import tag_tokens

    if shard_positions < 1:
        raise InputError(f"--shard-positions must be at least 1 (got {shard_positions}).")
    problems = Problems()
    items = []
    for conv in corpus.conversations:
        try:
            ids, roles, _ = tag_tokens(tokenizer, conv.messages)
            check_context(len(ids), context_limit, subject)
        except InputError as e:
            problems.add(f"{conv.where}: {e}")
            continue
        texts = tokenizer.batch_decode([[i] for i in ids]) if selection.regex is not None else [""] * len(ids)
        items.append(PlannedConversation(conv, list(ids), planned_count(selection, texts, roles)))
    problems.raise_if_any("The input")
    return Plan(items, pack_shards([p.n_positions for p in items], shard_positions), selection, shard_positions)


def subject_tokenizer(options):
    """The subject's tokenizer and context limit, from files only (no weights)."""
    from ..models.context import context_limit
    from ..models.loading import load_tokenizer, read_json, resolve_checkpoint
    from ..nla.presets import resolve_sources

    _, sources = resolve_sources(options)
    ckpt = resolve_checkpoint(sources["subject"])
    return load_tokenizer(ckpt), context_limit(read_json(ckpt.path / "config.json")), ckpt.name


def describe(plan: Plan, corpus: Corpus, limit: int | None = None) -> str:
    lines = [f"input: {len(corpus.files)} file(s), {corpus.kind}, sha256 {corpus.digest[:16]}…",
             f"conversations: {len(plan.items)}   tokens: {plan.n_tokens:,}   positions to explain: "
             f"{plan.n_positions:,}" + (f" (--limit {limit:,})" if limit is not None else ""),
             f"shards: {len(plan.shards)} of ≥{plan.shard_positions} positions"]
    if plan.selection.needs_capture:
        lines.append("which positions are the most surprising is known after each conversation's capture; "
                     "the count above is exact")
    return "\n".join(lines)


__all__ = ["Plan", "PlannedConversation", "make_plan", "longest_conversation", "pack_shards", "subject_tokenizer", "describe",
           "select_positions"]
