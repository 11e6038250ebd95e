"""Several GPUs: 27B-shaped nf4 models placed by the product's plan on two cards capped at
24 GiB each, one model forced over both cards, explain-all on two cards against one, and two
AV replicas splitting the rows (issue 15). `python -m bench multigpu [--dry-run]`.

Models are written to disk pre-quantised (random weights, nf4, `save_pretrained`: what the
pre-quantised cache holds) and loaded through `nla_tui.core.models.loading.load_model` with
`placement.device_map_for`: the product's path. The 62-layer directory serves as subject and AV.
Every plan the run uses is recomputed on CPU in tests/unit/test_multigpu_plans.py (`PLANS`).
"""

from __future__ import annotations

import gc
import shutil
import tempfile
import threading
import time
from pathlib import Path

import torch

from nla_tui.core.models import fast_decode as fd
from nla_tui.core.models import placement as pl

from . import gpu
from .common import Report

GIB = 1 << 30
CARD_GIB = 24.0  # the emulated card (RTX 4090 / A5000 class)
ONE_CARD_GIB = 44.0  # the one-card comparison: a 48 GB card, as in bench gpu
LAYERS = {"subject": 62, "av": 62, "ar": 42}


def simulated_free(n_cards: int, gib: float) -> dict[str, int]:
    """What gpu_free_memory() reports on fresh cards capped at `gib` (placement.capped_free)."""
    return {f"cuda:{i}": int(gib * GIB) for i in range(n_cards)}


def sizes_for(cfg_for, quant: str = "nf4") -> dict[str, pl.ModelSize]:
    """The sizes Engine._place computes for the three models (ROLE_CONTEXT_TOKENS)."""
    return {r: pl.model_size(cfg_for(n), quant, context_tokens=pl.ROLE_CONTEXT_TOKENS[r]) for r, n in LAYERS.items()}


def plan_auto(cfg_for, free: dict[str, int]) -> pl.Placement:
    return pl.plan_placement(sizes_for(cfg_for), free, {}, "nf4")


def plan_forced_split(cfg_for, n_cards: int = 2) -> pl.Placement:
    """One AV over `n_cards`: each card offered ~60% of its need, so none holds it whole."""
    size = sizes_for(cfg_for)["av"]
    return pl.plan_placement({"av": size}, {f"cuda:{i}": int(size.need * 0.6) for i in range(n_cards)}, {}, "nf4")


# name -> (description, plan builder): what the run exercises, and the CPU test re-plans.
PLANS = {
    "auto_2x24": ("subject + AV + AR, automatic plan, 2 cards x 24 GiB", lambda c: plan_auto(c, simulated_free(2, CARD_GIB))),
    "forced_split_av": ("the AV alone, forced over 2 cards", lambda c: plan_forced_split(c)),
}


def _cards() -> int:
    return torch.cuda.device_count() if gpu.DEV["device"] == "cuda" else 0


def _cap(gib: float | None) -> None:
    for i in range(_cards()):
        total = torch.cuda.get_device_properties(i).total_memory
        torch.cuda.set_per_process_memory_fraction(1.0 if gib is None else min(1.0, gib * GIB / total), i)


def _per_card() -> dict[str, dict[str, float]]:
    return {f"cuda:{i}": {"allocated_gib": gpu._gib(torch.cuda.memory_allocated(i)),
                          "peak_gib": gpu._gib(torch.cuda.max_memory_allocated(i))} for i in range(_cards())}


def _reset() -> None:
    gc.collect()
    for i in range(_cards()):
        torch.cuda.synchronize(i)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(i)


def _write(root: Path, layers: int) -> Path:
    """A pre-quantised checkpoint directory (written once per layer count)."""
    from .shapes import build

    path = root / f"gemma3-27b-shaped-{layers}L-{gpu.DEV['mode']}"
    if not path.exists():
        dev = "cuda:0" if gpu.DEV["device"] == "cuda" else "cpu"
        model = build(gpu._cfg(layers), gpu.DEV["mode"], dev)
        if gpu.DEV["mode"] == "nf4":  # what transformers writes for a model it quantised itself
            from nla_tui.core.models.loading import _quant_kwargs

            model.config.quantization_config = _quant_kwargs("nf4", "cuda")["quantization_config"]
        model.save_pretrained(str(path))
        del model
        _reset()
    return path


def _load(path: Path, placement: pl.Placement | None, role: str, device: str):
    from nla_tui.core.models.loading import load_model, resolve_checkpoint

    kw = pl.device_map_for(placement, role) if placement is not None else {}
    quant = "nf4" if gpu.DEV["mode"] == "nf4" else "bf16"
    return load_model(resolve_checkpoint(path), quant, device, kw.get("device_map"), kw.get("max_memory"))


def _where(model) -> dict[str, int]:
    """Bytes of parameters per device."""
    out: dict[str, int] = {}
    for p in model.parameters():
        out[str(p.device)] = out.get(str(p.device), 0) + p.numel() * p.element_size()
    return out


def _explain_rows(model, n: int, new_tokens: int, max_batch: int, warm: bool = True) -> tuple[float, int]:
    """Decode n rows (one template, n injected vectors) in passes of max_batch: (seconds, tokens)."""
    emb = gpu._av_embeds(model, n, seed=7)
    if warm:
        fd.warmup(model, [max_batch], max_len=gpu.AV_PROMPT + new_tokens)
    t = time.perf_counter()
    rows = fd.decode(model, emb, None, new_tokens, stop_token_ids=[], max_batch=max_batch, prefix_len=gpu.SLOT)
    gpu._sync()
    return time.perf_counter() - t, sum(len(r) for r in rows)


def run(rep: Report, out: Path, new_tokens: int = 150, n_explain: int = 150, workdir: str | None = None) -> None:
    d = rep.details
    dev = gpu.DEV["device"]
    cards = _cards()
    d["cards"] = cards
    root = Path(tempfile.mkdtemp(prefix="nla-bench-multigpu-", dir=workdir))
    m: dict = {}
    cfg_for = gpu._cfg
    d["plans"] = {name: {"description": desc, "entries": {r: (e if isinstance(e, str) else {str(k): v for k, v in e.items()})
                                                            for r, e in plan(cfg_for).entries.items()}}
                  for name, (desc, plan) in PLANS.items()}
    try:
        def write():
            t = time.perf_counter()
            m["path62"], m["path42"] = _write(root, 62), _write(root, 42)
            d["write_s"] = round(time.perf_counter() - t, 1)
        rep.section("write_checkpoints", write, out)

        def auto_2x24():
            # The product's own plan, from the capped cards' free memory (placement.gpu_free_memory).
            _cap(CARD_GIB)
            _reset()
            free = pl.gpu_free_memory() if cards >= 2 else simulated_free(2, CARD_GIB)
            placement = pl.plan_placement(sizes_for(cfg_for), free, {}, "nf4")
            rec = d["auto_2x24"] = {"free_gib": {k: gpu._gib(v) for k, v in free.items()},
                                    "placement": pl.describe(placement), "warnings": placement.warnings}
            if cards < 2:
                rec["skipped"] = f"{cards} CUDA device(s): placement computed, models not loaded"
                return
            t = time.perf_counter()
            for role, path in (("subject", m["path62"]), ("av", m["path62"]), ("ar", m["path42"])):
                m[role] = _load(path, placement, role, "cuda")
                rec[f"{role}_devices"] = {k: gpu._gib(v) for k, v in _where(m[role]).items()}
            rec["load_s"] = round(time.perf_counter() - t, 1)
            rec["after_load"] = _per_card()
            _works(m, rec, new_tokens)
            rec["after_work"] = _per_card()
            t, toks = _explain_all_plan(m, n_explain, new_tokens, rec)
            rep.add("multigpu_explain_all_2x24_s", t, "s", note=f"{n_explain} x {new_tokens} tokens, auto plan, "
                                                                 f"batch {rec['explain_batch']}")
            rep.add("multigpu_explain_all_2x24_tok_s", toks / t, "tok/s")
        rep.section("auto_2x24", auto_2x24, out)
        _cap(None)
        for role in ("subject", "av", "ar"):
            m.pop(role, None)
        _reset()
        # ... then one card against two, a forced split, two AV replicas (run_more, below)
        run_more(rep, out, m, d, new_tokens, n_explain, cards, _load, _reset, _cap, _explain_rows, _per_card, _where)
    finally:
        _cap(None)
        shutil.rmtree(root, ignore_errors=True)


def _works(m: dict, rec: dict, new_tokens: int) -> None:
    """Chat (subject decode), capture (layer-41 hook), explain (AV decode), score (AR forward)."""
    subj, av, ar = m["subject"], m["av"], m["ar"]
    dev0 = subj.get_input_embeddings().weight.device
    ids = torch.randint(10, 1000, (1, 64), device=dev0)
    reply = fd.decode(subj, subj.get_input_embeddings()(ids), None, 24, stop_token_ids=[])[0]
    got = {}
    layers = subj.model.layers
    hook = layers[min(gpu.LAYER_K, len(layers) - 1)].register_forward_hook(
        lambda mod, i, o: got.__setitem__("h", o[0] if isinstance(o, tuple) else o))
    try:
        with torch.inference_mode():
            subj(input_ids=torch.cat([ids, torch.tensor([reply], device=dev0)], 1), use_cache=False)
    finally:
        hook.remove()
    vec = got["h"][0, -1].float()
    emb = gpu._av_embeds(av, 1, seed=3)
    vec_av = vec.to(emb.device)  # the subject and the AV may sit on different cards
    emb[:, gpu.SLOT] = (vec_av / vec_av.norm() * emb[0, gpu.SLOT].norm()).to(emb.dtype)
    expl = fd.decode(av, emb, None, 32, stop_token_ids=[], prefix_len=gpu.SLOT)[0]
    ar_dev = ar.get_input_embeddings().weight.device
    with torch.inference_mode():
        h = ar.model(input_ids=torch.tensor([expl], device=ar_dev), use_cache=False).last_hidden_state[:, -1]
    cos = torch.nn.functional.cosine_similarity(h.float().cpu(), vec.cpu()[None]).item()
    rec["works"] = {"chat_tokens": len(reply), "capture_norm": round(vec.norm().item(), 2),
                    "explain_tokens": len(expl), "score_cos_finite": bool(cos == cos),
                    "graphs": fd.last_stats.get("graphs"), "graph_error": fd.last_stats.get("graph_error")}


def _explain_all_plan(m: dict, n: int, new_tokens: int, rec: dict) -> tuple[float, int]:
    """Explain-all as the product sizes it: batch from the AV card's free memory, parking the
    subject/AR parts on that card when that saves passes (parking.plan_explain)."""
    from nla_tui.core.models import parking as pk

    av = m["av"]
    dev = av.get_input_embeddings().weight.device
    c = gpu._cfg(62)
    per_row = c.num_hidden_layers * 2 * c.num_key_value_heads * c.head_dim * 2 * fd._round_len(gpu.AV_PROMPT + new_tokens)
    others = {"subject": m["subject"], "ar": m["ar"]}
    plan = pk.plan_explain(n, per_row, pk.free_bytes(dev), pk.bytes_on(others.values(), dev), pk.host_available())
    rec["explain_plan"] = plan.reason
    t0 = time.perf_counter()
    if plan.park:
        with pk.parked(others, dev):
            mb = pk.rows_that_fit(pk.free_bytes(dev), per_row, 160, n, pk.KV_SHARE_PARKED)
            _, toks = _explain_rows(av, n, new_tokens, mb)
            fd.clear(av)
    else:
        mb = plan.batch
        _, toks = _explain_rows(av, n, new_tokens, mb)
        fd.clear(av)
    rec["explain_batch"] = mb
    rec["explain_peak"] = _per_card()
    return time.perf_counter() - t0, toks


# Threads: each replica decodes its rows on its own card; CUDA work overlaps across devices.
def decode_replicas(models: list, n: int, new_tokens: int, max_batch: int) -> tuple[float, int]:
    share = [n // len(models) + (1 if i < n % len(models) else 0) for i in range(len(models))]
    res: list = [None] * len(models)
    for i, model in enumerate(models):  # graph capture is not part of the timed decode
        fd.warmup(model, [min(max_batch, share[i])], max_len=gpu.AV_PROMPT + new_tokens)

    def one(i):
        res[i] = _explain_rows(models[i], share[i], new_tokens, min(max_batch, share[i]), warm=False)
    t = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(models))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.perf_counter() - t, sum(r[1] for r in res if r)


# ------------------------------------------------------------ one card, a forced split, two replicas

def run_more(rep, out, m, d, new_tokens, n_explain, cards, _load, _reset, _cap, _explain_rows, _per_card, _where):
    cfg_for = gpu._cfg
    dev_ok = cards >= 1 or gpu.DEV["device"] != "cuda"
    device0 = "cuda:0" if gpu.DEV["device"] == "cuda" else "cpu"

    def one_card():
        # Today's single 48 GB card: the three models whole on card 0 (as `--device cuda:0`; the
        # automatic plan, which reserves a 4k-token subject context, asks for 45.3 GiB) capped at
        # 44 GiB, explain-all sized and parked by the same rule as on two cards.
        rec = d["one_card_44"] = {"placement": "all on cuda:0 (--device cuda:0)"}
        _cap(ONE_CARD_GIB)
        _reset()
        for role, key in (("subject", "path62"), ("av", "path62"), ("ar", "path42")):
            m[role] = _load(m[key], None, role, device0)
        rec["after_load"] = _per_card()
        _works(m, rec, new_tokens)
        t, toks = _explain_all_plan(m, n_explain, new_tokens, rec)
        two = d.get("auto_2x24", {})
        base = next((f.value for f in rep.figures if f.name == "multigpu_explain_all_2x24_s"), None)
        rep.add("multigpu_explain_all_1x44_s", t, "s", note=f"one card capped at {ONE_CARD_GIB:g} GiB, "
                                                          f"batch {rec['explain_batch']} ({rec['explain_plan']})")
        if base:
            rep.add("multigpu_explain_all_speedup_2x24_vs_1x44", t / base, "x",
                    note=f"2 x {CARD_GIB:g} GiB (batch {two.get('explain_batch')}) against 1 x {ONE_CARD_GIB:g} GiB")
        rep.add("multigpu_explain_all_1x44_tok_s", toks / t, "tok/s")
        for role in ("subject", "ar"):
            m.pop(role, None)
        _cap(None)
        _reset()
    if dev_ok:
        rep.section("one_card_44", one_card, out)

    def split():
        # The AV forced over two cards (plan "forced_split_av") against the AV on one card.
        from nla_tui.core.models import placement as pl

        rec = d["forced_split"] = {}
        if "av" not in m:
            m["av"] = _load(m["path62"], None, "av", device0)
        rec["one_card_ms"], rec["one_card_graphs"] = _step_ms(m["av"], new_tokens)
        if cards < 2:
            rec["skipped"] = f"{cards} CUDA device(s): split not loaded"
            return
        placement = PLANS["forced_split_av"][1](cfg_for)
        rec["placement"] = pl.describe(placement)
        rec["device_map_kwargs"] = {k: (v if k != "max_memory" else {str(i): b for i, b in v.items()})
                                    for k, v in pl.device_map_for(placement, "av").items()}
        m.pop("av")
        _reset()
        m["av_split"] = _load(m["path62"], placement, "av", "cuda")
        rec["split_devices"] = {k: gpu._gib(v) for k, v in _where(m["av_split"]).items()}
        rec["split_ms"], rec["split_graphs"] = _step_ms(m["av_split"], new_tokens)
        rep.add("multigpu_split_av_b1_ms_per_step", rec["split_ms"], "ms", rec["one_card_ms"],
                "AV over cuda:0+1 (forced) against the same model on one card, batch 1, captured step")
        m.pop("av_split")
        _reset()
    if dev_ok:
        rep.section("forced_split", split, out)

    def replicas():
        # Two uncapped cards (80 GB+ each): an AV replica on each, the rows split between them.
        rec = d["replicas"] = {}
        if cards < 2:
            rec["skipped"] = f"{cards} CUDA device(s)"
            return
        _cap(None)
        one = _load(m["path62"], None, "av", "cuda:0")
        batch = min(160, n_explain)
        t1, toks1 = _explain_rows(one, n_explain, new_tokens, batch)
        fd.clear(one)
        two = _load(m["path62"], None, "av", "cuda:1")
        t2, toks2 = decode_replicas([one, two], n_explain, new_tokens, batch)
        rec.update(one_s=round(t1, 2), one_tok=toks1, two_s=round(t2, 2), two_tok=toks2, peak=_per_card())
        rep.add("multigpu_replicas_explain_all_s", t2, "s", t1,
                f"{n_explain} x {new_tokens}: two AV replicas (cuda:0, cuda:1) splitting the rows; baseline one AV, one batch")
        rep.add("multigpu_replicas_speedup", t1 / t2, "x")
        del one, two
        _reset()
    if gpu.DEV["device"] == "cuda":
        rep.section("replicas", replicas, out)


@torch.inference_mode()
def _step_ms(model, new_tokens: int, steps: int = 30) -> tuple[float, bool]:
    ms, graphed = gpu.step_ms(model, 1, fd._round_len(gpu.AV_PROMPT + new_tokens), steps)
    return round(ms, 2), graphed
