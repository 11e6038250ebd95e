"""Issue 23 on a GPU: what `--quant auto` picks and the fidelity self-check's time and peak memory,
on a 27B-shaped pair (bench/shaped_pair.py: the released layout, tokenizer and sidecars; sparse
bf16 sources whose weights are all zero).

    python -m bench gpu --sections quant_auto --workdir /tmp [--tokenizer-dir DIR]
    python -m bench gpu --sections fidelity_check --workdir /tmp [--fidelity-cap-gib 48]

quant_auto: `Engine.load` with `--quant auto`, as `nla-tui --quant auto` runs it: the picks for the
card's free memory (subject first, then AR, then AV), the load time and the peak GPU memory.
fidelity_check: `Engine.load` in nf4 (random weights built on the card, shaped_pair.weights) on a
card capped at 48 GiB (torch's per-process fraction, so the allocator fails as a 48 GB card would),
then `check_fidelity`: the bf16 reference subject (layers 0..K) and AR read from the sparse sources
and placed in what the card has left, the rest in host memory (models/reference.py). Its time and
peak memory are what the numbers mean; the weights are random or zero (zero activations are
replaced by a random direction), so the readouts (cos, fve) say nothing about any real pair. The sources are sparse files, so their reads cost no disk time: a
real checkpoint's first read adds its disk time. `--dry-run`: a tiny pair on the CPU (checks the
script; the CPU runs auto as fp32).
"""

from __future__ import annotations

import gc
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .gpu_common import DEV, GIB, _gib, cap_memory


def _tokenizer_dir(given: str | None, root: Path) -> Path:
    """The given tokenizer files, else the demo pair's (Gemma 3's tokenizer and chat template), the
    tokenizer files alone (shaped_pair copies every file of the folder)."""
    if given:
        return Path(given)
    from nla_tui.core.models.loading import TOKENIZER_FILES
    from nla_tui.core.nla.demo import ensure_demo

    src, dst = Path(ensure_demo()["subject"]), root / "tokenizer"
    dst.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)
    return dst


def _pair(workdir: str | None, tokenizer_dir: str | None) -> tuple[dict[str, Path], Path]:
    from . import shaped_pair

    root = Path(tempfile.mkdtemp(prefix="nla-bench-fidelity-", dir=workdir))
    return shaped_pair.ensure_pair(root / "pair", _tokenizer_dir(tokenizer_dir, root), tiny=DEV["tiny"]), root


def _engine(pair: dict[str, Path], quant: str):
    from nla_tui.core.options import EngineOptions
    from nla_tui.core.runtime.engine import Engine

    return Engine(EngineOptions(subject=str(pair["subject"]), av=str(pair["av"]), ar=str(pair["ar"]), quant=quant,
                                device=DEV["device"], cache=False))


def _collect() -> None:
    gc.collect()
    if DEV["device"] == "cuda":
        torch.cuda.empty_cache()


def quant_auto(rep, workdir: str | None, tokenizer_dir: str | None) -> None:
    from transformers import AutoConfig

    from nla_tui.core.models.placement import gpu_free_memory, role_sizes
    from nla_tui.core.models.quant_choice import choose_quants

    d = rep.details.setdefault("quant_auto", {})
    pair, root = _pair(workdir, tokenizer_dir)
    try:
        cuda = DEV["device"] == "cuda"
        free = gpu_free_memory() if cuda else {}
        configs = {r: AutoConfig.from_pretrained(str(p)) for r, p in pair.items()}
        planned = choose_quants(configs, DEV["device"], free=free)
        d.update(free_gib={k: _gib(v) for k, v in free.items()}, planned=planned,
                 planned_need_gib={r: _gib(s.need) for r, s in role_sizes(configs, planned).items()})
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        engine = _engine(pair, "auto")
        engine.load()
        load_s = time.perf_counter() - t
        peak = torch.cuda.max_memory_allocated() if cuda else 0
        d.update(picked=engine.info.quants, label=engine.info.quant, placement=engine.info.placement,
                 load_s=round(load_s, 1), peak_gib=_gib(peak), allocated_gib=_gib(torch.cuda.memory_allocated())
                 if cuda else 0)
        rep.add("quant_auto_load_s", load_s, "s", None,
                f"--quant auto picked {engine.info.quant} for {d['free_gib']} GiB free (sparse zero sources: no "
                f"disk time); peak {d['peak_gib']} GiB")
        rep.add("quant_auto_peak_gib", peak / GIB, "GiB", None, f"placement: {engine.info.placement}")
        del engine
        _collect()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def fidelity_check(rep, workdir: str | None, tokenizer_dir: str | None, cap_gib: float | None) -> None:
    from nla_tui.core.nla import fidelity as fid
    from nla_tui.core.runtime.fidelity_check import check_fidelity

    from . import shaped_pair

    d = rep.details.setdefault("fidelity_check", {})
    pair, root = _pair(workdir, tokenizer_dir)
    cuda = DEV["device"] == "cuda"
    running = "nf4" if cuda else "bf16"  # bitsandbytes nf4 on the CPU is slow for no insight in a dry run
    real_activations = fid.layer_activations

    def nonzero(model, layer, ids, device):
        # The sparse reference's weights are zeros, so are its activations, which the AV refuses
        # (no direction): a random direction of the same shape costs the AV and AR the same.
        a = real_activations(model, layer, ids, device)
        return a if np.any(a) else np.random.default_rng(0).standard_normal(a.shape).astype(np.float32)

    try:
        cap_memory(cap_gib)
        fid.layer_activations = nonzero
        d.update(cap_gib=cap_gib if cuda else None, running=running)
        t = time.perf_counter()
        engine = _engine(pair, running)
        with shaped_pair.weights(running):  # the running models: random weights built on the card
            engine.load()
        d.update(load_s=round(time.perf_counter() - t, 1), models_gib=_gib(torch.cuda.memory_allocated())
                 if cuda else 0)
        lines: list[str] = []
        t = time.perf_counter()
        report, _ = check_fidelity(engine, with_open=False,
                                   progress=lambda s: lines.append(f"{time.perf_counter() - t:7.1f} s  {s}"))
        check_s = time.perf_counter() - t
        d.update(check_s=round(check_s, 1), steps=lines, peak_gib=_gib(report.peak_gpu_bytes or 0),
                 reference_placement=report.reference_placement, table=report.table())
        rep.add("fidelity_check_s", check_s, "s", None,
                f"{running} subject/AV/AR, card capped at {cap_gib} GiB; reference bf16 subject (layers 0..K) on "
                f"{report.reference_placement}; zero weights: the readouts mean nothing, time and memory do")
        rep.add("fidelity_check_peak_gib", (report.peak_gpu_bytes or 0) / GIB, "GiB", None,
                f"the three {running} models held {d['models_gib']} GiB before the check")
        del engine
        _collect()
    finally:
        fid.layer_activations = real_activations
        cap_memory(None)
        shutil.rmtree(root, ignore_errors=True)
