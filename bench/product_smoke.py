"""The product path end to end on whatever device is here, with a small random Gemma 3
pair laid out like the released checkpoints (AV/AR in the multimodal wrapper).

    python -m bench.product_smoke --device cuda --quant nf4 --tokenizer-dir DIR --out out.json

Unlike bench/gpu.py (which times 27B-shaped models built in memory), this goes
through nla_tui.core.runtime.engine exactly as `nla-tui` does: checkpoint dirs on disk,
sidecar validation, bitsandbytes loading, placement, capture, the fast AV decode, AR
scoring. It asserts behaviour, not speed, and writes what it saw as JSON.
"""

from __future__ import annotations

import argparse
import json
import lzma
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch


def _tokenizer_dir(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name.endswith(".xz"):
            (dst / f.name[:-3]).write_bytes(lzma.decompress(f.read_bytes()))
        else:
            shutil.copy(f, dst / f.name)
    return dst


def build_pair(root: Path, tok_dir: Path, layers: int = 6, k: int = 4, d: int = 256) -> dict[str, Path]:
    """subject (text-only), AV (multimodal, `layers`), AR (multimodal, K+1 layers)."""
    from transformers import (AutoTokenizer, Gemma3Config, Gemma3ForCausalLM,
                              Gemma3ForConditionalGeneration, Gemma3TextConfig)

    from nla_tui.core.nla import demo
    from safetensors.torch import save_file

    text = dict(vocab_size=262208, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=2, head_dim=64, sliding_window=128,
                max_position_embeddings=4096)
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                  image_size=28, patch_size=14)
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    torch.manual_seed(0)
    subject = Gemma3ForCausalLM(Gemma3TextConfig(**text)).eval()
    paths = {r: root / r for r in ("subject", "av", "ar")}
    subject.save_pretrained(paths["subject"])
    scale, var = demo._calibrate(tok, subject, k)
    for role, n in (("av", layers), ("ar", k + 1)):
        cfg = Gemma3Config(text_config={**text, "num_hidden_layers": n}, vision_config=vision, mm_tokens_per_image=4)
        m = Gemma3ForConditionalGeneration(cfg).eval()
        m.save_pretrained(paths[role])
    save_file({"weight": torch.randn(d, d) / d ** 0.5}, str(paths["ar"] / "value_head.safetensors"))
    for role, p in paths.items():
        tok.save_pretrained(p)
        if role != "subject":
            old = demo.DEMO_LAYER
            demo.DEMO_LAYER = k  # the sidecar writer records the demo's layer
            try:
                demo._write_sidecar(p, role, tok, d, scale, var)
            finally:
                demo.DEMO_LAYER = old
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quant", default=None)
    ap.add_argument("--tokenizer-dir", required=True, help="Gemma 3 tokenizer files (tokenizer.json may be .xz)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)

    from nla_tui.core.runtime.engine import Engine
    from nla_tui.core.types import Sampling

    report: dict = {"device": a.device, "torch": torch.__version__}
    if torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok_dir = _tokenizer_dir(Path(a.tokenizer_dir), tmp / "tok")
        paths = build_pair(tmp / "ckpt", tok_dir)
        t = time.perf_counter()
        eng = Engine.from_options(subject=str(paths["subject"]), av=str(paths["av"]), ar=str(paths["ar"]),
                                  device=a.device, quant=a.quant, cache=False)
        info = eng.load()
        report["load_s"] = round(time.perf_counter() - t, 2)
        report["info"] = info.to_json()
        report["placement"] = eng.placement_text
        report["linear_types"] = sorted({type(m).__name__ for m in eng.av.model.modules() if "Linear" in type(m).__name__})
        deltas: list[str] = []
        reply = eng.chat("What is the capital of France?", max_new_tokens=12, on_delta=deltas.append)
        report["reply_tokens_streamed"] = len(deltas)
        assert eng.activations.shape == (len(eng.tokens), info.d_model), eng.activations.shape
        assert all(t.norm > 0 for t in eng.tokens)
        streamed: dict[int, str] = {}
        exps = eng.explain(list(range(len(eng.tokens))), Sampling(max_new_tokens=24),
                           on_delta=lambda i, s: streamed.__setitem__(i, s))  # batch sized by the engine
        assert len(exps) == len(eng.tokens) and all(e.score is not None for e in exps)
        solo = eng.explain([5], Sampling(max_new_tokens=24))[0]
        report["batch_equals_solo_greedy"] = solo.raw == next(e for e in exps if e.index == 5).raw
        report["explained"] = len(exps)
        report["auto_batch_size"] = eng.explain_batch_size(24)
        report["mean_cos"] = sum(e.score.cos for e in exps) / len(exps)
        report["reply"] = reply[:80]
        if torch.cuda.is_available():
            report["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    report["ok"] = True
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
