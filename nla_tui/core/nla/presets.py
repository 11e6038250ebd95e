"""Named subject/AV/AR triples: the released NLA pairs and the embedded demo."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import InputError
from ..options import EngineOptions

Progress = Callable[[str, float, str], None]  # (model, fraction, message)

# What `nla-tui --preset demo` opens when given no transcript: a short exchange in the
# style the demo pair was trained on (a word's meaning, a Python question), its model
# turns written out and teacher-forced (the 270M base model is not a chat model).
DEMO_EXAMPLE = Path(__file__).with_name("demo_example.json")


@dataclass(frozen=True)
class Preset:
    name: str
    subject: str
    av: str
    ar: str
    layer: int
    description: str
    fve_variance: float | None = None  # predict-the-mean baseline, when published
    # Quantisation on CUDA when --quant is not given (None: the loader's default, nf4).
    cuda_quant: str | None = None


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset("gemma3-27b", "google/gemma-3-27b-it", "kitft/nla-gemma3-27b-L41-av",
               "kitft/nla-gemma3-27b-L41-ar", 41, "Gemma 3 27B-it, layer 41 of 62", 0.0579),
        Preset("gemma3-12b", "google/gemma-3-12b-it", "kitft/nla-gemma3-12b-L32-av",
               "kitft/nla-gemma3-12b-L32-ar", 32, "Gemma 3 12B-it, layer 32 of 48"),
        Preset("qwen2.5-7b", "Qwen/Qwen2.5-7B-Instruct", "kitft/nla-qwen2.5-7b-L20-av",
               "kitft/nla-qwen2.5-7b-L20-ar", 20, "Qwen 2.5 7B-Instruct, layer 20 of 28"),
        Preset("llama3.3-70b", "meta-llama/Llama-3.3-70B-Instruct", "kitft/Llama-3.3-70B-NLA-L53-av",
               "kitft/Llama-3.3-70B-NLA-L53-ar", 53, "Llama 3.3 70B-Instruct, layer 53 of 80"),
        # Paths are filled in at load time from the user cache (see demo.py).
        # bf16 on CUDA: nf4 moved the 270M's layer-12 activations to min cos 0.89 against
        # fp32 (bf16: 0.9997) and saves nothing worth having at this size.
        Preset("demo", "demo:subject", "demo:av", "demo:ar", 12,
               "Gemma 3 270M (CPU-friendly, from PyPI) with a mini NLA pair trained by this project",
               cuda_quant="bf16"),
    ]
}


def default_preset_name() -> str:
    """gemma3-27b on a CUDA machine, the demo elsewhere."""
    try:
        import torch

        return "gemma3-27b" if torch.cuda.is_available() else "demo"
    except ImportError:
        return "demo"


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise InputError(
            f"Unknown preset {name!r}. Choose one of: {', '.join(PRESETS)}; or give "
            f"--subject, --av and --ar as hub ids or local directories."
        ) from None


def resolve_sources(opts: EngineOptions, progress: Progress | None = None) -> tuple[Preset | None, dict[str, str]]:
    """Which subject/AV/AR to load: a preset, overridden piecewise by explicit ids/paths."""
    explicit = {k: getattr(opts, k) for k in ("subject", "av", "ar")}
    name = opts.preset or (None if all(explicit.values()) else default_preset_name())
    preset = get_preset(name) if name else None
    sources = {k: explicit[k] or (getattr(preset, k) if preset else None) for k in explicit}
    missing = [k for k, v in sources.items() if not v]
    if missing:
        raise InputError(f"No {', '.join('--' + m for m in missing)} given. Pass --preset, or all of "
                         f"--subject, --av and --ar (hub ids or local directories).")
    if any(v.startswith("demo:") for v in sources.values()):
        from .demo import ensure_demo

        paths = ensure_demo(lambda f, m: progress and progress("demo", f, m))
        sources = {k: str(paths[v.split(":", 1)[1]]) if v.startswith("demo:") else v for k, v in sources.items()}
    return preset, sources
