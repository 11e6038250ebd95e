"""A measured three-model start from the pre-quantised cache (issue 24, part 4).

    python -m bench gpu --sections start_three --workdir /tmp

Subject (62 layers), AV (62) and AR (42), 27B-shaped, are written to disk as sparse bf16
checkpoints (checkpoint.write_sparse_checkpoint: the disk cannot hold 145 GB of bf16); each is
loaded once through `load_model` with the cache, which quantises it and saves the quantised
copy (real data, ~43 GiB for the three); the page cache of every file is dropped; then the three
cached loads run back to back, and the AV's batch-1 decode graph is captured while the AR loads
(models/precapture.py, what Engine.load does): that is the measured start, to the moment the
capture has joined. Baseline, same run: the three first starts (quantise + one-time save).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import torch

from .checkpoint import GIB, drop_page_cache, write_sparse_checkpoint

ROLES = (("subject", 62), ("av", 62), ("ar", 42))


def run(rep, cfg_for, dev: str, quant: str, workdir: str | None, max_len: int) -> None:
    from nla_tui.core.models import fast_decode as fd
    from nla_tui.core.models.loading import load_model, resolve_checkpoint
    from nla_tui.core.models.precapture import BackgroundCapture
    from nla_tui.core.models.quant_cache import QuantCache

    d = rep.details.setdefault("start_three", {})
    root = Path(tempfile.mkdtemp(prefix="nla-bench-three-", dir=workdir))
    try:
        d.update(quant=quant, disk_free_gib=round(shutil.disk_usage(root).free / GIB, 1))
        ckpts = {}
        for role, layers in ROLES:
            w = write_sparse_checkpoint(cfg_for(layers), root / role)
            ckpts[role] = resolve_checkpoint(root / role)
            d[f"{role}_source_gib"] = round(w["bytes"] / GIB, 1)
        cache = QuantCache(root / "cache", bound=200 * GIB)
        first = 0.0
        for role, _ in ROLES:  # fill the cache: quantise + save, one model at a time
            t = time.perf_counter()
            model = load_model(ckpts[role], quant, dev, quant_cache=cache)
            torch.cuda.synchronize() if dev.startswith("cuda") else None
            first += time.perf_counter() - t
            del model
            torch.cuda.empty_cache() if dev.startswith("cuda") else None
        d["first_starts_s"] = round(first, 1)
        d["cache_gib"] = round(cache.total_bytes() / GIB, 2)
        d["page_cache"] = drop_page_cache(root)
        t0 = time.perf_counter()
        models, each, job = {}, {}, None
        for role, _ in ROLES:
            t = time.perf_counter()
            models[role] = load_model(ckpts[role], quant, dev, quant_cache=cache)
            each[role] = round(time.perf_counter() - t, 2)
            if role == "av":  # the AV's graph is captured while the AR loads, as Engine.load does
                job = BackgroundCapture(models["av"], max_len).start()
        loaded = time.perf_counter() - t0
        t = time.perf_counter()
        job.join()
        waited = time.perf_counter() - t
        wall = time.perf_counter() - t0
        graph = fd.captured_runner(models["av"], 1, max_len)
        d.update(each_s=each, load_s=round(loaded, 2), capture_b1_s=round(job.seconds, 2),
                 capture_wait_after_loads_s=round(waited, 2), ready_s=round(wall, 2), capture_error=job.error,
                 graph_captured=graph is not None and graph.graph is not None,
                 gpu_gib=round(torch.cuda.memory_allocated() / GIB, 2) if dev.startswith("cuda") else 0)
        rep.add("start_three_models_cached_s", wall, "s", first,
                f"measured: subject 62 + AV 62 + AR 42 layers {quant} from the cache ({d['cache_gib']} GiB, page "
                f"cache dropped), the AV's graph captured while the AR loads ({job.seconds:.1f} s, waited "
                f"{waited:.1f} s after the loads); baseline: the three first starts (quantise + save)")
        fd.clear(models["av"])
        del models
    finally:
        shutil.rmtree(root, ignore_errors=True)
