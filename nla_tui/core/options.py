"""What to load and where: EngineOptions, built from the command line or from a session.

Plain data and the standard library only, so the CLI, the UI and `nla-tui check`
share one definition without importing torch or each other. Which checkpoints a
preset names is resolved later, by `core.nla.presets.resolve_sources`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .errors import InputError
from .types import ModelInfo

QUANTS = ("nf4", "int4", "int8", "bf16", "fp32")  # what each model can run in (core/models/loading.py)
QUANT_CHOICES = QUANTS + ("auto",)  # --quant auto: the highest precision that fits (core/models/quant_choice.py)

PAIR_FLAG = "--extra-pair"


@dataclass(frozen=True)
class PairSpec:
    """A second AV/AR pair over the same subject (`--extra-pair av=DIR,ar=DIR[,label=NAME]`):
    two local checkpoint directories; its layer comes from their sidecars."""

    av: str
    ar: str
    label: str = ""


def parse_pair_spec(text: str) -> PairSpec:
    """`av=DIR,ar=DIR[,label=NAME]`, syntax only (the directories are checked against the
    subject by core.runtime.precheck.check_extra_pair, still before any model loads)."""
    usage = f"write {PAIR_FLAG} av=DIR,ar=DIR (optionally ,label=NAME)"
    fields: dict[str, str] = {}
    for part in str(text).split(","):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or key not in ("av", "ar", "label"):
            raise InputError(f"{PAIR_FLAG} part {part.strip()[:40]!r} is not av=…, ar=… or label=…: {usage}.")
        if key in fields:
            raise InputError(f"{PAIR_FLAG} names {key}= twice: {usage}.")
        fields[key] = value.strip()
    missing = [k for k in ("av", "ar") if not fields.get(k)]
    if missing:
        raise InputError(f"{PAIR_FLAG} has no {' or '.join(k + '=DIR' for k in missing)}: {usage}.")
    label = fields.get("label", "")
    if len(label) > 40 or any(not ch.isprintable() for ch in label):
        raise InputError(f"{PAIR_FLAG} label= must be at most 40 printable characters.")
    return PairSpec(fields["av"], fields["ar"], label)


@dataclass(frozen=True)
class EngineOptions:
    preset: str | None = None
    subject: str | None = None
    av: str | None = None
    ar: str | None = None
    layer: int | None = None
    quant: str | None = None
    device: str | None = None
    fve_variance: float | None = None
    devices: str | None = None  # --devices: "subject=0,av=1,ar=1"; None = place by free GPU memory
    cache: bool | None = None  # on-disk activation/explanation caches; None = on unless NLA_TUI_NO_CACHE=1
    cache_dir: str | None = None  # default: NLA_TUI_CACHE or the user cache dir
    park: str | None = None  # explain-all: "auto" (default), "always" or "never" park the subject + AR
    subject_quant: str | None = None  # --subject-quant: the subject's precision alone (overrides --quant for it)
    extra_pair: PairSpec | None = None  # a second AV/AR over the same subject (--extra-pair)
    # The longest conversation the subject will hold, in tokens: placement reserves its KV cache
    # for that many (None: 4,096, a chat that grows). `nla-tui sweep` sets it from its plan.
    subject_context_tokens: int | None = None

    def check_quants(self) -> None:
        """Refuse an unknown precision before anything loads (scripts build EngineOptions by hand)."""
        if self.quant is not None and self.quant not in QUANT_CHOICES:
            raise InputError(f"Unknown --quant {self.quant!r}: use one of {', '.join(QUANT_CHOICES)}.")
        if self.subject_quant is not None and self.subject_quant not in QUANTS:
            raise InputError(f"Unknown --subject-quant {self.subject_quant!r}: use one of {', '.join(QUANTS)}.")


def from_args(args: Any) -> EngineOptions:
    """Every model flag of an argparse Namespace (`nla-tui`, `run`, `check`). A flag the
    parser did not define (a bare Namespace from a test or a script) counts as not given."""
    get = lambda name: getattr(args, name, None)  # noqa: E731
    return EngineOptions(preset=get("preset"), subject=get("subject"), av=get("av"), ar=get("ar"),
                         layer=get("layer"), quant=get("quant"), device=get("device"),
                         fve_variance=get("fve_variance"), devices=get("devices"),
                         cache=False if get("no_cache") else None, cache_dir=get("cache_dir"),
                         park=get("park"), subject_quant=get("subject_quant"),
                         extra_pair=parse_pair_spec(get("extra_pair")) if get("extra_pair") else None)


def from_model_info(info: ModelInfo, base: EngineOptions | None = None) -> EngineOptions:
    """The options that reload the models a session was saved with (`L` on an opened
    session). What the session recorded about the models wins: the preset, the three
    checkpoints, the layer and the fve variance. Where they run (device, precision,
    placement, caches) is this machine's business: `base` (this run's flags) or the
    defaults, since a session made on a GPU box may be opened on a laptop."""
    # A demo session records its checkpoints as "demo:subject" etc.; resolve_sources
    # rebuilds those from the shipped demo pair.
    return replace(base or EngineOptions(), preset=info.preset, subject=info.subject, av=info.av,
                   ar=info.ar, layer=info.layer, fve_variance=info.fve_variance)
