"""Plain data for steering (SteerResult: a steered continuation) and compare, shared by the engine,
sessions, export and the UI. No torch here (the UI and `nla-tui open` use it)."""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field
from typing import Any

from .types import Candidate, Explanation


@dataclass
class SteerResult:
    """One steer: the subject regenerated from token `index` with a steering vector added at
    layer K (from `source`: a file, a − b of two tokens, an SAE feature, or AR(edited) −
    AR(original); its direction × alpha × its unit's norm), beside the unsteered
    continuation. The conversation itself is never changed. original/edited_explanation
    are empty for a source other than an edited explanation."""

    index: int
    token_text: str
    layer: int
    original_explanation: str
    edited_explanation: str
    alpha: float
    span: str  # "here" | "onward"
    vector_norm: float  # ‖vector added‖ = unit norm × |alpha|
    before: list[Candidate] = field(default_factory=list)  # next-token top-5 at index, unsteered
    after: list[Candidate] = field(default_factory=list)  # … steered
    original_tokens: list[str] = field(default_factory=list)  # unsteered greedy continuation (pieces)
    steered_tokens: list[str] = field(default_factory=list)
    original_ids: list[int] = field(default_factory=list)
    steered_ids: list[int] = field(default_factory=list)
    created: str = ""
    # The branch (core/branch_tree.py) whose token `index` is, when the steer was made on an
    # edited version of the conversation; None: the conversation as captured (then not written).
    branch: int | None = None
    # Where the steering vector came from and what it was (steer_sources.source_record: kind,
    # the source's fields, describe, norm, unit, unit_norm, layer, warnings); None: a steer saved
    # before sources existed, an edited explanation's (then not written).
    source: dict[str, Any] | None = None

    @property
    def source_kind(self) -> str:
        return (self.source or {}).get("kind", "text")

    @property
    def source_text(self) -> str:
        """The source in words ("file v.npy", "token 3 − token 9", ...)."""
        return str((self.source or {}).get("describe") or f"AR reading of an edited explanation of token {self.index}")

    @property
    def unit(self) -> str:
        """What alpha multiplies (recorded; a steer saved before sources existed: the token's norm)."""
        return str((self.source or {}).get("unit") or "the token's activation norm")

    @property
    def unit_text(self) -> str:
        """alpha's unit and, when recorded, its value: "median activation norm of the layer (= 12545.4)"."""
        value = (self.source or {}).get("unit_norm")
        return self.unit + ("" if value is None else f" (= {number_text(value)})")

    @property
    def original_text(self) -> str:
        return "".join(self.original_tokens)

    @property
    def steered_text(self) -> str:
        return "".join(self.steered_tokens)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for optional in ("branch", "source"):
            if d[optional] is None:
                del d[optional]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "SteerResult":
        known = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in d.items() if k in known}
        kw["before"] = [Candidate(**c) for c in d.get("before", [])]
        kw["after"] = [Candidate(**c) for c in d.get("after", [])]
        return cls(**kw)


def number_text(x: float) -> str:
    """A norm for people: 12545.4, 3.2, 0.0123."""
    return f"{x:.1f}" if abs(x) >= 1 else f"{x:.3g}"


@dataclass
class Comparison:
    """Tokens i and j compared: cos(a, b) and the explanations of a − b and b − a
    (each scored by the AR against its own difference vector)."""

    i: int
    j: int
    cos: float
    diff_norm: float  # ‖a − b‖
    a_minus_b: Explanation | None = None
    b_minus_a: Explanation | None = None
    message: str = ""  # set when there is nothing to explain (a == b)
    vector: Any = None  # np.ndarray a − b (not serialised)

    def to_json(self) -> dict[str, Any]:
        return {"i": self.i, "j": self.j, "cos": self.cos, "diff_norm": self.diff_norm, "message": self.message,
                "a_minus_b": self.a_minus_b.to_json() if self.a_minus_b else None,
                "b_minus_a": self.b_minus_a.to_json() if self.b_minus_a else None}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Comparison":
        ex = lambda k: Explanation.from_json(d[k]) if d.get(k) else None  # noqa: E731
        return cls(int(d["i"]), int(d["j"]), float(d["cos"]), float(d["diff_norm"]), ex("a_minus_b"), ex("b_minus_a"),
                   str(d.get("message", "")))


def zero_difference_message(i: int, j: int) -> str:
    what = "a token with itself" if i == j else f"tokens {i} and {j}, which have identical activations"
    return (f"Comparing {what}: a − b is the zero vector, so there is no difference to explain. "
            f"Pick two different tokens (in the TUI: c on A, then c on B).")


def compare_activations(activations: Any, i: int, j: int, message: str = "") -> Comparison:
    """The model-free part of a comparison: cos(a, b), a − b and its norm (numpy only).
    A zero difference gets its message here; otherwise `message` is kept."""
    import numpy as np

    a = np.asarray(activations[i], np.float64)
    b = np.asarray(activations[j], np.float64)
    diff = (a - b).astype(np.float32)
    cos = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
    norm = float(np.linalg.norm(diff))
    return Comparison(i, j, cos, norm, vector=diff, message=zero_difference_message(i, j) if norm == 0.0 else message)


def token_diff(a: list[str], b: list[str]) -> tuple[list[tuple[str, bool]], list[tuple[str, bool]]]:
    """Each side's pieces with a flag: True where it differs from the other side."""
    left: list[tuple[str, bool]] = []
    right: list[tuple[str, bool]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        same = op == "equal"
        left += [(p, not same) for p in a[i1:i2]]
        right += [(p, not same) for p in b[j1:j2]]
    return left, right
