"""Why an explanation at a position should not be trusted, and the verdict shown for it.

Made once here and shown everywhere: the TUI's explanation pane, the `nla-tui run`
table, and the Markdown / JSON / HTML exports all read `position_caveats` and
`verdict`, so a headless reader gets the same warnings as someone in the TUI.

A high round-trip score at a special token (<bos>, a turn marker) or in the first
few tokens is not a good explanation: the AV was trained on ordinary positions with
context, and those states are attention sinks whose vector the AR can match with
text that says nothing true (`<bos>` explained as `Token " string" after …`). Such
positions never get the verdict "good".
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Sequence

from .types import NOISY_PREFIX, Score, TokenInfo

# A token whose activation norm exceeds this multiple of the conversation's median is
# flagged: such positions are attention sinks the AV was never trained to read.
OUTLIER_NORM_FACTOR = 4.0
SPECIAL_ROLES = ("bos", "special")
# What "good" becomes at a flagged position: the score is high, the text is not trusted.
UNRELIABLE = "unreliable"


@dataclass(frozen=True)
class Caveat:
    kind: str  # "special" | "early" | "outlier": for grouping in headless output
    text: str  # one sentence for this position

    # The same reason without the position, for a line that lists many positions.
    @property
    def general(self) -> str:
        return GENERAL[self.kind]


GENERAL = {
    "special": "special tokens (<bos>, turn markers, role names): not ordinary text; the AV was not trained on them",
    "early": f"in the first {NOISY_PREFIX} tokens: little context, noisy activation",
    "outlier": f"activation norm over {OUTLIER_NORM_FACTOR:.0f}x the median: outliers the AV was not trained on",
}


def median_norm(tokens: Sequence[TokenInfo]) -> float:
    """The median activation norm over ordinary tokens (all tokens if there are none)."""
    norms = [t.norm for t in tokens if t.role not in SPECIAL_ROLES] or [t.norm for t in tokens]
    return statistics.median(norms) if norms else 0.0


def is_outlier(token: TokenInfo, median: float) -> bool:
    return median > 0 and token.norm > OUTLIER_NORM_FACTOR * median


def position_caveats(tokens: Sequence[TokenInfo], index: int, median: float | None = None) -> list[Caveat]:
    """Every reason not to trust an explanation at `index` (empty when there is none).
    Pass `median` (median_norm(tokens)) when calling for many positions."""
    tok = tokens[index]
    med = median_norm(tokens) if median is None else median
    out = []
    if tok.role in SPECIAL_ROLES:
        out.append(Caveat("special", "a special token (<bos>, turn marker or role name), not ordinary "
                                     "text: the AV was not trained on it, so a high score means little"))
    if index < NOISY_PREFIX:
        out.append(Caveat("early", f"position {index} is in the first {NOISY_PREFIX} tokens: "
                                   "little context, noisy activation"))
    if is_outlier(tok, med):
        out.append(Caveat("outlier", f"activation norm is {tok.norm / med:.0f}x the median: "
                                     "an outlier the AV was not trained on"))
    return out


def verdict(score: Score | None, caveats: Sequence[Caveat]) -> str:
    """The plain label shown beside a score: never "good" at a flagged position."""
    if score is None:
        return "unscored"
    label = score.label
    return UNRELIABLE if caveats and label == "good" else label


def grouped(caveats_by_index: dict[int, list[Caveat]], explanation_warnings: dict[int, list[str]]) -> list[str]:
    """Warning lines for headless output: one per kind of position caveat, naming its
    positions, then one per explanation warning (those differ per explanation)."""
    kinds: dict[str, list[int]] = {}
    for i, cs in sorted(caveats_by_index.items()):
        for c in cs:
            kinds.setdefault(c.kind, []).append(i)
    lines = [f"{'token' if len(idx) == 1 else 'tokens'} {_ranges(idx)}: {GENERAL[k]}" for k, idx in kinds.items()]
    for i, ws in sorted(explanation_warnings.items()):
        lines += [f"token {i}: {w}" for w in ws]
    return lines


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    parts, start = [], None
    for k, i in enumerate(indices):
        if start is None:
            start = i
        if k + 1 == len(indices) or indices[k + 1] != i + 1:
            parts.append(str(start) if start == i else f"{start}-{i}")
            start = None
    return ", ".join(parts)
