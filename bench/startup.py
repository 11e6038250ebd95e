"""Start-up from disk: today's path (bf16 checkpoint quantised at load) against the
pre-quantised cache (nla_tui/core/models/quant_cache.py), through `load_model`, in one run.

A 27B-shaped bf16 checkpoint (random weights) is written to disk with as many of its 62
layers as the disk holds next to its quantised copy; the page cache is dropped before each
timed load. Three-model figures scale the per-layer time to subject 62 + AV 62 + AR 42.
"""

from __future__ import annotations

import gc
import shutil
import tempfile
import time
from pathlib import Path

import torch

from .checkpoint import GIB, checkpoint_bytes, drop_page_cache, write_checkpoint

RELEASE_LAYERS = 62 + 62 + 42  # subject, AV, AR of the gemma3-27b preset


def _sync(dev: str) -> None:
    if dev.startswith("cuda"):
        torch.cuda.synchronize()


def _free_gpu(dev: str) -> None:
    gc.collect()
    if dev.startswith("cuda"):
        torch.cuda.empty_cache()


def pick_layers(cfg_for, free_disk: int, quant_ratio: float = 0.32, spare: int = 6 * GIB, most: int = 62) -> int:
    """Most layers whose bf16 checkpoint plus its quantised copy (~quant_ratio of it) fit the disk."""
    one, two = checkpoint_bytes(cfg_for(1)), checkpoint_bytes(cfg_for(2))
    per_layer, base = two - one, 2 * one - two
    if per_layer <= 0:  # the dry run's tiny config has a fixed depth
        return most
    room = (free_disk - spare) / (1 + quant_ratio) - base
    return int(max(1, min(most, room // per_layer)))


@torch.inference_mode()
def _logits(model, dev: str) -> torch.Tensor:
    ids = torch.arange(5, 37, device=dev)[None]
    return model(input_ids=ids).logits[0, -1].float().cpu()


def run(rep, out: Path, cfg_for, dev: str, quant: str, workdir: str | None = None, layers: int | None = None) -> None:
    from nla_tui.core.models.loading import load_model, resolve_checkpoint
    from nla_tui.core.models.quant_cache import QuantCache

    d = rep.details.setdefault("startup", {})
    root = Path(tempfile.mkdtemp(prefix="nla-bench-startup-", dir=workdir))
    try:
        free = shutil.disk_usage(root).free
        n = layers or pick_layers(cfg_for, free)
        cfg = cfg_for(n)
        d.update(layers=n, disk_free_gib=round(free / GIB, 1), quant=quant)
        wrote = write_checkpoint(cfg, root / "ckpt", device=dev)
        d.update(checkpoint_gib=round(wrote["bytes"] / GIB, 2), write_s=wrote["seconds"])
        ckpt = resolve_checkpoint(root / "ckpt")
        cache = QuantCache(root / "cache")

        def timed(label: str, **kw):
            d[f"{label}_page_cache"] = drop_page_cache(root)
            saves = []
            t = time.perf_counter()
            model = load_model(ckpt, quant, dev, quant_cache=kw.get("cache"),
                               progress=lambda f, m: saves.append((time.perf_counter(), m)))
            _sync(dev)
            wall = time.perf_counter() - t
            d[f"{label}_s"] = round(wall, 2)
            first_save = next((ts for ts, m in saves if "saving" in m), None)
            if first_save is not None:
                d[f"{label}_save_s"] = round(saves[-1][0] - first_save, 2)
            return model, wall

        model, cold = timed("cold")  # today's path: quantise the bf16 checkpoint at every start
        ref = _logits(model, dev)
        d["gpu_gib"] = round(model.get_memory_footprint() / GIB, 2)
        del model
        _free_gpu(dev)
        model, first = timed("first_with_cache", cache=cache)  # quantise + the one-time save
        del model
        _free_gpu(dev)
        [entry] = cache.entries()
        d["cache_entry_gib"] = round(entry.size / GIB, 2)
        model, cached = timed("cached", cache=cache)
        d["cached_logits_equal_cold"] = bool(torch.equal(_logits(model, dev), ref))
        del model
        _free_gpu(dev)
        scale = RELEASE_LAYERS / n
        rep.add("start_one_model_cold_s", cold, "s", note=f"{n}-layer 27B-shaped bf16 checkpoint on disk -> {quant}, "
                                                          "load_model, page cache dropped (today's path)")
        rep.add("start_one_model_cached_s", cached, "s", cold, f"same model from the pre-quantised cache "
                                                               f"({d['cache_entry_gib']} GiB)")
        rep.add("start_first_with_save_s", first, "s", cold, "first start: quantise + one-time save to the cache")
        rep.add("start_three_models_cached_s", cached * scale, "s", cold * scale,
                f"per-layer time x {RELEASE_LAYERS} layers (subject 62 + AV 62 + AR 42); baseline: today's path")
    finally:
        shutil.rmtree(root, ignore_errors=True)
