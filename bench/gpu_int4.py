"""GPU suite sections for issue 24: the int4 kernel path against nf4 in the same run, and a
torch.compile probe of the decoder layers under the captured graph.

    python -m bench gpu --sections fast_b1,int4_compare      # nf4 AV first: the baseline
    python -m bench gpu --sections fast_b1,compile_probe
"""

from __future__ import annotations

import gc
import time

import torch

from nla_tui.core.models import fast_decode as fd

from .gpu_common import AV_PROMPT, DEV, SLOT, _alloc, _av_embeds, _gib, _sync, step_ms
from .shapes import build

BATCHES = (1, 8, 64, 160)


def _explanation(model, new_tokens: int) -> dict:
    runs = []
    for s in range(3):
        fd.decode(model, _av_embeds(model, 1, seed=10 + s), None, new_tokens, stop_token_ids=[], prefix_len=SLOT)
        runs.append(dict(fd.last_stats))
    runs.sort(key=lambda x: x["total_s"])
    return runs[1]


def _greedy_agreement(model, n: int = 32) -> dict:
    """fast_decode (captured graph) against HF generate (eager) on the same weights and kernel."""
    dev = model.get_input_embeddings().weight.device
    emb = _av_embeds(model, 1, seed=5)
    ref = model.generate(inputs_embeds=emb, attention_mask=torch.ones(1, AV_PROMPT, dtype=torch.long, device=dev),
                         max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0,
                         temperature=None, top_p=None, top_k=None)[0].tolist()
    got = fd.decode(model, emb, None, n, stop_token_ids=[], prefix_len=SLOT)[0]
    first = next((i for i, (a, b) in enumerate(zip(ref, got)) if a != b), len(ref))
    return {"first_mismatch": first, "of": len(ref), "graphs": fd.last_stats["graphs"],
            "graph_error": fd.last_stats["graph_error"]}


def _kernel_error(model, batches: tuple[int, ...] = BATCHES) -> dict:
    """One MLP matrix: the fast kernel against the portable dequantise + F.linear (same weights)."""
    from nla_tui.core.models.int4 import Int4Linear, dequantize, quantize

    lin = next(m for m in model.modules() if isinstance(m, Int4Linear))
    if lin.gl is None:
        return {"kernel": "torch"}
    dev = next(lin.gl.parameters()).device
    w = torch.randn(lin.out_features, lin.in_features, device=dev, dtype=torch.bfloat16) * 0.02
    ref_lin = torch.nn.Linear(lin.in_features, lin.out_features, bias=False, device="meta")
    ref_lin.weight = torch.nn.Parameter(w, requires_grad=False)
    fresh = Int4Linear.from_linear(ref_lin)
    packed, scale, zero = quantize(w)
    wq = dequantize(packed, scale, zero, torch.bfloat16)
    fresh.to_gemlite()
    out = {"kernel": "gemlite"}
    for m in batches:
        x = torch.randn(m, lin.in_features, device=dev, dtype=torch.bfloat16)
        ref = (x.double() @ wq.double().t())
        y = fresh(x).double()
        exact = (x.double() @ w.double().t())
        out[m] = {"kernel_vs_dequant": float((y - ref).norm() / ref.norm()),
                  "int4_vs_bf16_weights": float((ref - exact).norm() / exact.norm())}
    return out


@torch.inference_mode()
def int4_compare(rep, av_nf4, cfg62, max_len: int, new_tokens: int, n_explain: int = 150,
                 batches: tuple[int, ...] = BATCHES) -> None:
    """Build an int4 AV beside the nf4 one and time the same things on both, same process;
    then explain-all in one batch (`n_explain` rows) with each AV, int4 first. `batches=(1,)`
    (section int4_b1) times batch 1 alone: gemlite compiles its kernels once per batch shape
    (~40 s each on a fresh machine), which made the full comparison outlast a 10-minute call."""
    d = rep.details
    base = {}
    for b in batches:  # the nf4 baseline, re-measured here so both sit in the same state
        base[b], _ = step_ms(av_nf4, b, fd._round_len(max_len))
    t = time.perf_counter()
    before = _alloc()
    av4 = build(cfg62, "int4", DEV["device"])
    rec = d["int4"] = {"build_s": round(time.perf_counter() - t, 1), "weights_gib": _gib(_alloc() - before),
                       "kernel": getattr(av4.config, "nla_int4_kernel", None)}
    from nla_tui.core.models.int4 import kernel
    rec["kernel_reason"] = kernel()[1]
    t = time.perf_counter()
    fd.warmup(av4, [1], max_len=max_len)
    rec["capture_b1_s"] = round(time.perf_counter() - t, 2)  # includes Triton autotune/compile
    rec["greedy_agreement"] = _greedy_agreement(av4)
    rec["kernel_error"] = _kernel_error(av4, batches)
    rec["step_ms_by_batch"] = {}
    for b in batches:
        if DEV["device"] == "cuda" and b > 64 and torch.cuda.mem_get_info()[0] < 24 * 2**30:
            rec["step_ms_by_batch"][b] = "skipped: the KV cache does not fit beside the other models"
            continue  # run 1 (H100) ran out of memory here with the three nf4 models loaded
        ms, graphed = step_ms(av4, b, fd._round_len(max_len))
        rec["step_ms_by_batch"][b] = {"ms": round(ms, 2), "nf4_ms": round(base[b], 2), "graph": graphed,
                                      "tok_s": round(1000 * b / ms)}
    med = _explanation(av4, new_tokens)
    fd.warmup(av_nf4, [1], max_len=max_len)
    med_nf4 = _explanation(av_nf4, new_tokens)
    rec["explanation"] = {"int4": med, "nf4": med_nf4}
    ms = 1000 * med["step_s"] / max(1, med["steps"])
    ms_nf4 = 1000 * med_nf4["step_s"] / max(1, med_nf4["steps"])
    rep.add("int4_b1_ms_per_step", ms, "ms", ms_nf4, f"int4 ({rec['kernel']}) AV decode step, batch 1; baseline nf4 same run")
    rep.add("int4_explanation_200_s", med["total_s"], "s", med_nf4["total_s"], f"{new_tokens} tokens, batch 1; baseline nf4")
    for b in batches[1:]:
        if not isinstance(rec["step_ms_by_batch"][b], dict):
            continue
        rep.add(f"int4_b{b}_ms_per_step", rec["step_ms_by_batch"][b]["ms"], "ms", base[b], "captured step; baseline nf4")
    fd.clear(av4)
    if len(batches) > 1:
        _one_batch(rep, rec, av4, av_nf4, max_len, new_tokens, n_explain)
    fd.clear(av4)
    del av4
    gc.collect()
    torch.cuda.empty_cache() if DEV["device"] == "cuda" else None


def _one_batch(rep, rec: dict, av4, av_nf4, max_len: int, new_tokens: int, n_explain: int) -> None:
    """Explain-all of `n_explain` rows in one bucket with the int4 AV, then the nf4 AV (the
    baseline, same process): what issue 24's "one batch on 80 GB" figure gets from the kernel."""
    bucket = fd.bucket_for(n_explain)
    c = av4.config
    kv = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 2 * fd._round_len(max_len) * bucket
    if DEV["device"] == "cuda" and torch.cuda.mem_get_info()[0] < kv + 4 * 2**30:
        rec["one_batch"] = f"skipped: {bucket} rows' KV cache ({kv / 2**30:.1f} GiB) does not fit"
        return
    out = {}
    for name, model in (("int4", av4), ("nf4", av_nf4)):
        fd.clear(model)
        fd.warmup(model, [bucket], max_len=max_len)  # capture outside the timing
        emb = _av_embeds(model, n_explain, seed=99)
        _sync()
        t = time.perf_counter()
        rows = fd.decode(model, emb, None, new_tokens, stop_token_ids=[], max_batch=n_explain, prefix_len=SLOT)
        _sync()
        wall = time.perf_counter() - t
        toks = sum(len(r) for r in rows)
        out[name] = {"rows": n_explain, "bucket": bucket, "wall_s": round(wall, 2), "tokens": toks,
                     "tok_s": round(toks / wall), "graphs": fd.last_stats["graphs"]}
        fd.clear(model)
    rec["one_batch"] = out
    rep.add("int4_explain_all_one_batch_tok_s", out["int4"]["tok_s"], "tok/s", out["nf4"]["tok_s"],
            f"{n_explain} x {new_tokens} tokens in one bucket ({bucket}), AV alone on the card; baseline nf4 same run")


@torch.inference_mode()
def compile_probe(rep, av, max_len: int) -> None:
    """The product's fusion (nla_tui/core/models/fusion.py: RMSNorm + rotary compiled under the
    captured graph) against the same step unfused, same model, same run; and what compiling costs."""
    from nla_tui.core.models import fusion

    d = rep.details
    rec = d["compile_probe"] = {}
    fd.clear(av)
    fusion.unfuse(av)
    fusion.restore_rope()
    os_env = fusion.os.environ.get("NLA_TUI_FUSE")
    fusion.os.environ["NLA_TUI_FUSE"] = "0"
    try:
        base, _ = step_ms(av, 1, fd._round_len(max_len))
    finally:
        if os_env is None:
            fusion.os.environ.pop("NLA_TUI_FUSE")
        else:
            fusion.os.environ["NLA_TUI_FUSE"] = os_env
    fd.clear(av)
    t = time.perf_counter()
    fd.warmup(av, [1], max_len=max_len)  # fuses (compiles) at capture
    rec["compile_and_capture_b1_s"] = round(time.perf_counter() - t, 1)
    ms, graphed = step_ms(av, 1, fd._round_len(max_len))
    rec.update(step_ms=round(ms, 2), graph=graphed, plain_step_ms=round(base, 2), fused=bool(getattr(av, "_nla_fused", False)))
    rep.add("fused_norms_rope_b1_ms_per_step", ms, "ms", base,
            f"RMSNorm + rotary compiled under the captured graph (fusion.py); baseline unfused, same run; "
            f"compile+capture {rec['compile_and_capture_b1_s']} s")
    fd.clear(av)
    _sync()
