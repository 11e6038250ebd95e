"""Where a steering vector comes from, as plain data (torch-free: the UI's steer dialog
builds these, the worker resolves them with runtime/steer_vectors.py).

    FileVector("dir.safetensors", name="W")  # one tensor of a .safetensors / .npy file
    TokenDifference(a=12, b=30)               # activation[a] − activation[b] of the session
    TextReading(index=9, edited="…")          # AR(edited) − AR(original explanation of token 9)
    SaeFeature("gemma-scope-L12/", 1234)      # decoder row 1234 of a local sae-lens SAE

Strength: every source but the text reading is added as its *direction* times alpha
times the layer's median activation norm over the session's tokens (`median_norm`), so
alpha 0.5 means "half a typical activation" whatever the file's own scale. The text
reading keeps the edited-explanation steer's unit, the steered token's own activation norm (issue 13's
measured default). `ResolvedVector` carries the vector and what to show about it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from .errors import InputError

# The units alpha is given in, per source (shown beside the norm).
MEDIAN_NORM = "median activation norm of the layer"
TOKEN_NORM = "the token's activation norm"


@dataclass(frozen=True)
class FileVector:
    """One vector from a .safetensors file (`name` picks a tensor; optional when it holds
    one) or a .npy file (read with allow_pickle=False)."""

    path: str
    name: str | None = None

    def describe(self) -> str:
        return f"file {self.path}" + (f" [{self.name}]" if self.name else "")


@dataclass(frozen=True)
class TokenDifference:
    """activation[a] − activation[b] of the session's conversation at layer K."""

    a: int
    b: int

    def describe(self) -> str:
        return f"token {self.a} − token {self.b}"


@dataclass(frozen=True)
class TextReading:
    """Steer toward an edited explanation: AR(edited) − AR(original); original None = the token's latest explanation."""

    index: int
    edited: str
    original: str | None = None

    def describe(self) -> str:
        return f"AR reading of an edited explanation of token {self.index}"


@dataclass(frozen=True)
class SaeFeature:
    """Decoder row `feature` (W_dec[feature]) of a sparse autoencoder saved by sae-lens:
    `directory` holds cfg.json (d_in, d_sae, hook_name) and sae_weights.safetensors."""

    directory: str
    feature: int
    any_layer: bool = False  # steer even when the SAE was trained on another layer than K

    def describe(self) -> str:
        return f"SAE {self.directory} feature {self.feature}"


VectorSource = Union[FileVector, TokenDifference, TextReading, SaeFeature]


@dataclass
class ResolvedVector:
    """A validated steering direction: finite [d_model] (float32 from a file, an SAE or the
    session's activations; the AR's float64 difference for a text reading), non-zero.

    `vector` is the raw vector as given (its norm is `norm`); steering adds
    vector / norm × alpha × `unit_norm`. `layer` is the layer the source says it belongs
    to (None: the source does not say; a session's own activations are layer K)."""

    vector: np.ndarray
    source: str  # describe() of where it came from
    unit: str  # MEDIAN_NORM or TOKEN_NORM: what alpha multiplies
    unit_norm: float  # that norm's value
    layer: int | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def norm(self) -> float:
        return float(np.linalg.norm(self.vector.astype(np.float64)))

    def scaled(self, alpha: float) -> np.ndarray:
        """The vector steering adds: this direction at alpha × unit_norm (float32)."""
        v = self.vector.astype(np.float64)
        return (v / np.linalg.norm(v) * self.unit_norm * alpha).astype(np.float32)

    def summary(self) -> dict[str, Any]:
        """What a steered continuation records about its vector (session, exports)."""
        return {"source": self.source, "norm": self.norm, "unit": self.unit, "unit_norm": self.unit_norm,
                "layer": self.layer, "warnings": list(self.warnings)}


# A source as JSON (SteerResult.source, session.json's steered[].source): "kind" names the
# class, the other keys are its fields; what the resolved vector was (norm, unit…) sits beside.
KINDS: dict[str, type] = {"file": FileVector, "difference": TokenDifference, "text": TextReading, "sae": SaeFeature}


def source_spec(source: VectorSource) -> dict[str, Any]:
    """The source's own fields with its kind (a text reading's texts are the result's
    original/edited explanations, so they are not repeated here)."""
    kind = next(k for k, cls in KINDS.items() if isinstance(source, cls))
    if isinstance(source, TextReading):
        return {"kind": kind, "index": source.index}
    spec = {"kind": kind, **{k: getattr(source, k) for k in source.__dataclass_fields__}}
    if isinstance(source, SaeFeature) and not source.any_layer:
        del spec["any_layer"]
    if isinstance(source, FileVector) and source.name is None:
        del spec["name"]
    return spec


def source_record(source: VectorSource, resolved: ResolvedVector) -> dict[str, Any]:
    """What a steered continuation records about where its vector came from and what it was:
    the source (source_spec), its description, the raw vector's norm, alpha's unit and that
    unit's value, the layer the source names (an SAE's hook) and any warnings."""
    rec = {**source_spec(source), "describe": source.describe(), "norm": resolved.norm, "unit": resolved.unit,
           "unit_norm": resolved.unit_norm}
    if resolved.layer is not None:
        rec["layer"] = resolved.layer
    if resolved.warnings:
        rec["warnings"] = list(resolved.warnings)
    return rec


def source_from_record(record: dict[str, Any] | None, index: int, edited: str, original: str) -> VectorSource:
    """The source a recorded steer used (a record without one is an edited explanation's)."""
    if not record or record.get("kind", "text") == "text":
        return TextReading(index, edited, original)
    cls = KINDS[record["kind"]]
    return cls(**{k: record[k] for k in cls.__dataclass_fields__ if k in record})


def token_difference(activations: Any, source: TokenDifference) -> ResolvedVector:
    """activation[a] − activation[b] of the session (numpy: the TUI's dialog shows its norm
    before anything runs), float32 like the activations; a zero difference is refused."""
    acts = np.asarray(activations)
    n = len(acts)
    for what, i in (("a", source.a), ("b", source.b)):
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n:
            raise InputError(f"Token {what} = {i} of the difference is out of range: the conversation has {n} "
                             f"tokens (0..{n - 1}).")
    diff = (acts[source.a].astype(np.float64) - acts[source.b].astype(np.float64)).astype(np.float32)
    if not np.isfinite(diff).all():
        raise InputError(f"{source.describe()} is not finite: the session's activations hold NaN or Inf there.")
    if not np.any(diff):
        same = "a token with itself" if source.a == source.b else "two tokens with identical activations"
        raise InputError(f"{source.describe()} is the zero vector ({same}): pick two different tokens.")
    return ResolvedVector(diff, source.describe(), MEDIAN_NORM, median_norm(acts))


def median_norm(activations: Any) -> float:
    """The median L2 norm of the session's layer-K activations: robust to <bos> and the
    other outliers (hundreds of times a typical norm on the released models)."""
    acts = np.asarray(activations, np.float64)
    if acts.ndim != 2 or len(acts) == 0:
        raise InputError("The session has no captured tokens, so there is no activation norm to scale the "
                         "steering vector by: chat or open a conversation first.")
    return float(np.median(np.linalg.norm(acts, axis=1)))
