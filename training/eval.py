"""`python -m training.eval`: the demo pair on the held-out split, through the product path.

Builds the demo layout from the given adapters exactly as `nla-tui --preset demo`
does at first use (GGUF → HF, LoRA merged into plain weights, value head, sidecars),
loads it with `Engine.load()`, and measures it beside the untrained pair, a shuffled
control and the AR fed the warm-start targets, all in the same run. CPU or GPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import corpus, data, evaluate


def _engine(root: Path, device: str):
    from nla_tui.core.options import EngineOptions
    from nla_tui.core.runtime.engine import Engine

    quant = "bf16" if device.startswith("cuda") else "fp32"
    eng = Engine(EngineOptions(subject=str(root / "base"), av=str(root / "av"), ar=str(root / "ar"),
                               quant=quant, device=device, cache=False))
    eng.load()
    return eng


def _build(root: Path, adapters: Path | None) -> float:
    from nla_tui.core.nla.demo import build_pair

    t = time.perf_counter()
    if not (root / "ar" / "value_head.safetensors").is_file():
        build_pair(root, lambda f, m: print(m, flush=True), adapters)
    return time.perf_counter() - t


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m training.eval", description=__doc__.split("\n\n")[0])
    ap.add_argument("--adapters", type=Path, help="dir with adapters.safetensors + training.json "
                                                  "(default: the ones shipped in nla_tui)")
    ap.add_argument("--corpus", default=".carry/corpus.jsonl.gz")
    ap.add_argument("--work", type=Path, required=True, help="where the pairs are built")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=256, help="held-out positions")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args(argv)
    from nla_tui.core.nla.demo import shipped_adapters

    adapters = args.adapters or shipped_adapters()
    if adapters is None:
        raise SystemExit("no adapters: pass --adapters DIR (adapters.safetensors + training.json)")
    # One build per adapters file: a stale build of other adapters must never be measured.
    digest = hashlib.sha256((adapters / "adapters.safetensors").read_bytes()).hexdigest()[:12]
    trained_root = args.work / f"trained-{digest}"
    build_s = _build(trained_root, adapters)
    _build(args.work / "untrained", None)
    trained = _engine(trained_root, args.device)
    records = [r for r in corpus.load(Path(args.corpus)) if r["split"] == "heldout"]
    ex = data.build_examples(trained.subject, records, max_heldout=args.n, progress=lambda m: None)[:args.n]
    vecs = torch.stack([e.vector for e in ex]).cpu().numpy()
    targets = [e.target for e in ex]
    result = {"adapters_sha256_12": digest, "machine": f"{torch.cuda.get_device_name(0) if args.device.startswith('cuda') else platform.processor() or 'CPU'}",
              "precision": "bf16" if args.device.startswith("cuda") else "fp32",
              "command": "python -m training.eval " + " ".join(sys.argv[1:]), "heldout_n": len(ex),
              "demo_build_s": round(build_s, 1)}
    t = time.perf_counter()
    result["trained"] = evaluate.evaluate(trained.av, trained.ar, vecs, targets, batch=args.batch)
    result["trained"]["seconds"] = round(time.perf_counter() - t, 1)
    del trained
    untrained = _engine(args.work / "untrained", args.device)
    result["untrained"] = evaluate.evaluate(untrained.av, untrained.ar, vecs, None, batch=args.batch)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    tmp.replace(args.out)
    for k in ("trained", "untrained"):
        print(k, json.dumps({m: (round(v, 4) if isinstance(v, float) else v)
                             for m, v in result[k].items() if m != "examples"}))


if __name__ == "__main__":
    main()
