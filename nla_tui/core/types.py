"""Plain data shared by the engine, the worker, sessions and the UI.

Nothing here imports torch: the UI and `nla-tui open` on a GPU-less machine use
these types too. Activations travel as numpy float32 arrays.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

# Roles a token of the conversation can have. "special" covers <bos>, turn
# markers and role names inserted by the chat template.
ROLES = ("bos", "special", "system", "user", "model", "tool_call", "tool_result")

# Positions before this index decode poorly: the subject has little context yet.
NOISY_PREFIX = 10


@dataclass
class Candidate:
    """One of the subject's top-k next-token candidates at a position."""

    token_id: int
    text: str
    prob: float


@dataclass
class TokenInfo:
    """One token of the conversation exactly as the subject saw it."""

    index: int
    token_id: int
    text: str
    role: str  # one of ROLES
    turn: int  # index of the message this token belongs to (-1 for <bos>)
    norm: float  # L2 norm of the layer-K activation at this position
    top: list[Candidate] = field(default_factory=list)  # next-token candidates

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TokenInfo":
        top = [Candidate(int(c["token_id"]), str(c["text"]), float(c["prob"])) for c in d.get("top", [])]
        return cls(
            index=int(d["index"]),
            token_id=int(d["token_id"]),
            text=str(d["text"]),
            role=str(d["role"]),
            turn=int(d["turn"]),
            # null: a non-finite norm that was never written as NaN (see jsonsafe)
            norm=float("nan") if d["norm"] is None else float(d["norm"]),
            top=top,
        )


# Lengths every entry point defaults to (the CLI's flags, the TUI's jobs, the engine): one place.
EXPLAIN_TOKENS = 200  # AV max new tokens: the released pairs' explanations fit well inside
REPLY_TOKENS = 256  # a chat reply
CONTINUATION_TOKENS = 32  # a steered continuation (each side)


@dataclass(frozen=True)
class Sampling:
    """AV sampling parameters. temperature 0 means greedy (seed unused)."""

    temperature: float = 0.0
    max_new_tokens: int = EXPLAIN_TOKENS
    seed: int = 0
    top_p: float = 1.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Sampling":
        return cls(
            temperature=float(d.get("temperature", 0.0)),
            max_new_tokens=int(d.get("max_new_tokens", EXPLAIN_TOKENS)),
            seed=int(d.get("seed", 0)),
            top_p=float(d.get("top_p", 1.0)),
        )


@dataclass
class Score:
    """Round-trip fidelity. mse_nrm = 2(1 - cos); fve_nrm None without a variance baseline."""

    cos: float
    mse_nrm: float
    fve_nrm: float | None

    @property
    def fidelity(self) -> float:
        """The number to colour by: fve_nrm when known, else cos."""
        return self.fve_nrm if self.fve_nrm is not None else self.cos

    @property
    def label(self) -> str:
        """A plain-English verdict. Thresholds follow the released pairs
        (mean in-distribution fve_nrm ~0.7-0.82)."""
        if self.fve_nrm is not None:
            v = self.fve_nrm
            return "good" if v >= 0.6 else "mediocre" if v >= 0.3 else "poor"
        v = self.cos
        return "good" if v >= 0.9 else "mediocre" if v >= 0.5 else "poor"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> "Score | None":
        if d is None or d.get("cos") is None or d.get("mse_nrm") is None:
            return None  # unscored, or a non-finite score saved as null (see jsonsafe)
        fve = d.get("fve_nrm")
        return cls(cos=float(d["cos"]), mse_nrm=float(d["mse_nrm"]),
                   fve_nrm=None if fve is None else float(fve))


# Warnings an explanation carries as data (core/nla/explain.py makes them; readers only show them).
TRUNCATED_WARNING = "no closing </explanation> tag: the explanation was cut off (raise max new tokens)"
NOT_FINITE_WARNING = "the AR's reconstruction was not finite (NaN/Inf): not scored"


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


@dataclass
class SentenceScore:
    """One sentence (or line) of an explanation scored by the AR against the explanation's
    vector: on its own, and the whole explanation without it (core/nla/sentences.py).
    Fidelity is fve_nrm where the AR has a variance baseline, else cos."""

    text: str
    alone: float | None  # the sentence by itself
    without: float | None  # the explanation with this sentence left out

    def support(self, full: float | None) -> float | None:
        """How much fidelity the explanation loses without this sentence: what of the
        vector this sentence, and no other, carries."""
        return None if full is None or self.without is None else full - self.without


@dataclass
class Explanation:
    """One AV explanation of the activation at token `index`, and its AR score."""

    index: int
    text: str  # the part inside <explanation> tags, or the raw text if parsing failed
    raw: str  # everything the AV generated
    sampling: Sampling
    prompt: str | None = None  # custom AV prompt with <INJECT>, None = sidecar template
    score: Score | None = None
    truncated: bool = False  # no closing </explanation> tag
    warnings: list[str] = field(default_factory=list)
    untrained_av: bool = False  # demo pair: text is not a faithful explanation
    # A sweep's per-position controls (core/corpus/controls.py), e.g. {"specificity": 0.4,
    # "others": 8, "prior_fve": 0.1}; None where none were computed (then not written).
    controls: dict[str, float] | None = None
    # Per-sentence fidelity (core/nla/sentences.py), computed for the cursor's explanation;
    # None where it was not (then not written).
    sentences: list[SentenceScore] | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["sampling"] = self.sampling.to_json()
        d["score"] = None if self.score is None else self.score.to_json()
        if self.controls is None:
            del d["controls"]
        if self.sentences is None:
            del d["sentences"]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Explanation":
        return cls(
            index=int(d["index"]),
            text=str(d["text"]),
            raw=str(d.get("raw", d["text"])),
            sampling=Sampling.from_json(d.get("sampling", {})),
            prompt=d.get("prompt"),
            score=Score.from_json(d.get("score")),
            truncated=bool(d.get("truncated", False)),
            warnings=list(d.get("warnings", [])),
            untrained_av=bool(d.get("untrained_av", False)),
            controls={str(k): float(v) for k, v in d["controls"].items() if v is not None}
            if isinstance(d.get("controls"), dict) else None,
            sentences=[SentenceScore(str(x["text"]), _opt_float(x.get("alone")), _opt_float(x.get("without")))
                       for x in d["sentences"] if isinstance(x, dict) and "text" in x]
            if isinstance(d.get("sentences"), list) else None,
        )


def group_by_index(explanations: Iterable["Explanation"], into: dict[int, list["Explanation"]] | None = None,
                   newest_first: bool = False) -> dict[int, list["Explanation"]]:
    """Explanations by token index (added to `into` when given), in the order given, or
    each new one put first (`newest_first`: the engine's own order, latest on top)."""
    out: dict[int, list[Explanation]] = {} if into is None else into
    for e in explanations:
        have = out.setdefault(e.index, [])
        have.insert(0, e) if newest_first else have.append(e)
    return out


@dataclass
class ModelInfo:
    """What produced a session: enough to reproduce it and to key caches."""

    preset: str | None
    subject: str
    av: str
    ar: str
    layer: int
    quant: str
    device: str
    d_model: int
    revision: dict[str, str | None] = field(default_factory=dict)
    injection_scale: float | None = None
    mse_scale: float | None = None
    fve_variance: float | None = None
    untrained_av: bool = False
    placement: str = ""  # where each model lives, e.g. "subject cuda:0 15.0G · av cuda:1 15.0G · …"
    # What the pair is, from its sidecar's `training` block (nla-tui's trained demo pair):
    # a short label and a sentence. Empty for hub pairs, untrained pairs and sessions
    # saved before these fields existed (readers treat a missing field as "").
    pair_label: str = ""
    pair_note: str = ""
    # The precision each model ran in ({"subject": "bf16", "av": "nf4", "ar": "nf4"}); `quant` is
    # its label ("nf4" when all three agree). Empty in sessions saved before per-model precisions.
    quants: dict[str, str] = field(default_factory=dict)
    # The fidelity self-check's verdict for these models and precisions (core/fidelity_report.py),
    # "" when the check has not run; fidelity_drifts: the verdict says the running precision drifts.
    fidelity: str = ""
    fidelity_drifts: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ModelInfo":
        """Types are checked (TypeError/ValueError on a malformed document), since the UI
        formats these numbers and keys caches with them."""
        known = {f for f in cls.__dataclass_fields__}
        info = cls(**{k: v for k, v in d.items() if k in known})
        for name in ("subject", "av", "ar", "quant", "device", "placement"):
            if not isinstance(getattr(info, name), str):
                raise TypeError(f"models.{name} must be a string")
        if info.preset is not None and not isinstance(info.preset, str):
            raise TypeError("models.preset must be a string or null")
        info.layer, info.d_model = int(info.layer), int(info.d_model)
        for name in ("injection_scale", "mse_scale", "fve_variance"):
            v = getattr(info, name)
            if v is not None:
                setattr(info, name, float(v))
        if not isinstance(info.revision, dict):
            raise TypeError("models.revision must be a mapping")
        if not isinstance(info.quants, dict) or not all(isinstance(v, str) for v in info.quants.values()):
            raise TypeError("models.quants must map models to precisions")
        if not isinstance(info.fidelity, str):
            raise TypeError("models.fidelity must be a string")
        info.fidelity_drifts = bool(info.fidelity_drifts)
        info.untrained_av = bool(info.untrained_av)
        return info


@dataclass
class CardMemory:
    """GPU memory on one CUDA card, as the worker reads it for the status line."""

    index: int  # the CUDA device number
    used: int  # bytes this process has allocated on it
    total: int  # bytes


@dataclass
class Capture:
    """The subject's layer-K activations and top-k next-token candidates at every
    position: produced by Subject.capture, or read back from the activation cache."""

    activations: Any  # np.ndarray float32 [T, d]
    top_ids: Any  # np.ndarray int64 [T, k]
    top_probs: Any  # np.ndarray float32 [T, k]
    # Every layer's residual-stream output, float32 [T, L, d], for the logit lens
    # (core/models/lens.py); None when the conversation is over the lens's memory budget
    # or the capture came from a cache entry without them.
    residuals: Any = None
    # The first position the subject ran: rows before it were copied from the capture an
    # edited conversation branched from (Subject.capture's `parent`); 0 for a whole capture.
    start: int = 0


@dataclass
class Message:
    """One chat message, OpenAI style.

    role is "system" | "user" | "assistant" | "tool" ("function", the older name,
    is read as "tool"). An assistant message may carry `tool_calls` (OpenAI's
    [{"id", "type": "function", "function": {"name", "arguments"}}]); a tool message
    answers one of them (`tool_call_id`) and may name the tool (`name`).
    core.store.transcript reads every accepted shape into this one.
    """

    role: str
    content: str
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.name is not None:
            d["name"] = self.name
        if self.tool_calls:
            d["tool_calls"] = self.tool_calls
        if self.tool_call_id is not None:
            d["tool_call_id"] = self.tool_call_id
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Message":
        calls = d.get("tool_calls")
        return cls(role=str(d["role"]), content=str(d.get("content") or ""),
                   name=None if d.get("name") is None else str(d["name"]),
                   tool_calls=list(calls) if calls else None,
                   tool_call_id=None if d.get("tool_call_id") is None else str(d["tool_call_id"]))
