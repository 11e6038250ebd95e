"""A Gemma-3-27B-shaped NLA pair on disk for the product's own Engine: the corpus sweep and the
serve benches run `Engine.load()` on it, as `nla-tui sweep --subject … --av … --ar …` would.

What is real: the released layout (config.json, safetensors index and headers of a 62-layer subject,
62-layer AV, 42-layer AR), the Gemma 3 tokenizer with its chat template (the demo pair's files),
sidecars written by the demo's own writer (layer K = 41, the AR's K+1 layers), a random d×d value
head. What is not: the weights. Three 27B bf16 sources are 145 GB and the GPU box's disk is 64 GiB,
so the sources are sparse (bench/checkpoint.py) and `weights()` swaps the engine's `load_model` for
bench/shapes.py's builder: random nf4 weights made on the card, Linear by Linear (~2 s a model).
Speed and memory depend on shapes and kernels, not on weight values; random weights rarely emit a
stop token, so every explanation runs its full length (the worst case).

    write_pair(root, tokenizer_dir)  -> {"subject": dir, "av": dir, "ar": dir}
    with weights("nf4"): Engine(options).load()

`tiny=True` (the --dry-run on a CPU) keeps the vocabulary (the tokenizer's ids must fit) and
shrinks everything else.
"""

from __future__ import annotations

import contextlib
import json
import lzma
import shutil
from pathlib import Path

import torch

LAYER_K = 41  # as the released 27B pair (2/3 of 62)
INJECTION_SCALE = 100.0  # any positive norm: random weights have no calibrated scale
FVE_VARIANCE = 1.0


def config(layers: int, tiny: bool = False):
    from transformers import Gemma3TextConfig

    from .shapes import gemma3_27b_config

    if not tiny:
        return gemma3_27b_config(layers)
    return Gemma3TextConfig(vocab_size=262208, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
                            sliding_window=32, max_position_embeddings=4096)


def roles(tiny: bool = False) -> dict[str, int]:
    """Layers per role: subject and AV 62, AR K+1 (tiny: 6, 6, 4 with K = 3)."""
    k = 3 if tiny else LAYER_K
    return {"subject": 6 if tiny else 62, "av": 6 if tiny else 62, "ar": k + 1}


def _tokenizer_files(src: Path, dst: Path) -> None:
    for f in src.iterdir():
        if f.name.endswith(".xz"):
            (dst / f.name[:-3]).write_bytes(lzma.decompress(f.read_bytes()))
        elif f.is_file():
            shutil.copy(f, dst / f.name)


def write_pair(root: Path, tokenizer_dir: Path, tiny: bool = False) -> dict[str, Path]:
    """Sparse sources + tokenizer + sidecars (+ the AR's value head) under root/{subject,av,ar}."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from nla_tui.core.nla import demo

    from .checkpoint import write_sparse_checkpoint

    root = Path(root)
    paths = {}
    k = roles(tiny)["ar"] - 1
    for role, layers in roles(tiny).items():
        p = paths[role] = root / role
        write_sparse_checkpoint(config(layers, tiny), p)
        _tokenizer_files(Path(tokenizer_dir), p)
    tok = AutoTokenizer.from_pretrained(str(paths["subject"]))
    d = config(2, tiny).hidden_size
    old = demo.DEMO_LAYER
    demo.DEMO_LAYER = k  # the demo's sidecar writer records its layer
    try:
        for role in ("av", "ar"):
            demo._write_sidecar(paths[role], role, tok, d, INJECTION_SCALE, FVE_VARIANCE)
    finally:
        demo.DEMO_LAYER = old
    g = torch.Generator().manual_seed(0)
    save_file({"weight": (torch.randn(d, d, generator=g) / d ** 0.5).to(torch.bfloat16)},
              str(paths["ar"] / "value_head.safetensors"))
    (root / "PAIR.json").write_text(json.dumps({"tiny": tiny, "layer": k, "roles": roles(tiny)}))
    return paths


def ensure_pair(root: Path, tokenizer_dir: Path, tiny: bool = False) -> dict[str, Path]:
    """The pair in `root`, written once: a second bench on the same box reuses it."""
    root = Path(root)
    marker = root / "PAIR.json"
    if marker.is_file() and json.loads(marker.read_text()).get("tiny") == tiny:
        return {r: root / r for r in roles(tiny)}
    shutil.rmtree(root, ignore_errors=True)
    return write_pair(root, tokenizer_dir, tiny)


@contextlib.contextmanager
def weights(mode: str = "nf4"):
    """Within: the engine's `load_model` builds random `mode` weights of each checkpoint's config
    on the asked device instead of reading the (sparse) files. Everything else in Engine.load runs
    as shipped: sidecars, tokenizers, the AV's checks and its decode graph captured during the AR's
    load, the AR's value head from disk."""
    from transformers import AutoConfig

    from nla_tui.core.runtime import engine

    from .shapes import build

    real = engine.load_model

    def random_weights(ckpt, quant, device, *args, **kwargs):
        cfg = AutoConfig.from_pretrained(str(ckpt.path))
        return build(cfg, mode if device.startswith("cuda") else "bf16", device)

    engine.load_model = random_weights
    try:
        yield
    finally:
        engine.load_model = real
