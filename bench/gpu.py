"""GPU benchmark: Gemma-3-27B-shaped random weights in nf4 (subject 62, AV 62, AR 42 layers).

Every speed figure carries an eager HF baseline measured in the same run:
`model.generate` (dynamic cache, no graphs), as in BENCHMARKS.md's first measurements.
Random weights rarely emit a stop token, so every row decodes the full length
(the worst case for an explanation).
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import torch

from nla_tui.core.models import fast_decode as fd

from .common import Report, median_time
from .gpu_common import (AV_PROMPT, DEV, GIB, LAYER_K, SLOT, _alloc, _av_embeds, _cfg, _gib, _peak, _reset_peak,
                         _sync, hf_ms_per_step, step_ms)
from .shapes import build, value_head

# Sections `--sections` can pick; the builds they need run with them.
SECTIONS = ("startup", "start_three", "eager_b1", "fast_b1", "sweep", "eager_batch", "explain_all_capped", "explain_all_parked",
            "explain_all_one_batch", "subject_chat", "steered_continuation", "capture", "ar_score",
            "denest_experiment", "int4_compare", "int4_b1", "compile_probe", "quant_auto", "fidelity_check")
# Run only when named: each loads its own three 27B-shaped models through Engine.load (minutes).
_OPT_IN = {"quant_auto", "fidelity_check"}
_NEEDS_THREE = {"explain_all_capped", "explain_all_parked", "explain_all_one_batch", "subject_chat",
                "steered_continuation", "capture", "ar_score"}


def run(rep: Report, out: Path, new_tokens: int = 200, n_explain: int = 150, mem_budget_gib: float = 44.0,
        sections: set[str] | None = None, workdir: str | None = None, tokenizer_dir: str | None = None,
        fidelity_cap_gib: float | None = 48.0) -> None:
    cfg62, cfg42 = _cfg(62), _cfg(42)
    dev, mode = DEV["device"], DEV["mode"]
    layer_k = min(LAYER_K, cfg62.num_hidden_layers - 1)
    m: dict = {}
    d = rep.details
    max_len = AV_PROMPT + new_tokens
    want = set(SECTIONS) - _OPT_IN if not sections else set(sections)
    if "explain_all_parked" in want:
        want.add("explain_all_capped")  # its baseline: today's path, same run
    d["sections"] = sorted(want)

    def section(name, fn):
        if name in want:
            rep.section(name, fn, out)

    def startup():
        from . import startup as st

        # The dry run exercises the cache in nf4 on the CPU too (bitsandbytes runs there).
        st.run(rep, out, _cfg, dev, "nf4" if mode == "bf16" else mode, workdir)
    section("startup", startup)

    def start_three():
        from . import start_three as s3

        s3.run(rep, _cfg, dev, "nf4" if mode == "bf16" else mode, workdir, max_len)
    section("start_three", start_three)

    # Issue 23, each on its own 27B-shaped pair through Engine.load (bench/gpu_fidelity.py).
    def quant_auto():
        from . import gpu_fidelity

        gpu_fidelity.quant_auto(rep, workdir, tokenizer_dir)
    section("quant_auto", quant_auto)

    def fidelity_check():
        from . import gpu_fidelity

        gpu_fidelity.fidelity_check(rep, workdir, tokenizer_dir, fidelity_cap_gib)
    section("fidelity_check", fidelity_check)
    if not want - {"startup", "start_three", "quant_auto", "fidelity_check"}:
        return

    def build_av():
        t = time.perf_counter()
        m["av"] = build(cfg62, mode, dev)
        d["build_av_s"] = round(time.perf_counter() - t, 1)
        d["av_weights_gib"] = _gib(_alloc())
    rep.section("build_av", build_av, out)
    av = m["av"]

    def eager_b1():
        d["eager_b1_ms_per_step"] = hf_ms_per_step(av, _av_embeds(av, 1), 24)
    section("eager_b1", eager_b1)

    def fast_b1():
        t = time.perf_counter()
        fd.warmup(av, [1], max_len=max_len)
        d["capture_b1_s"] = round(time.perf_counter() - t, 2)
        emb = _av_embeds(av, 1, seed=5)
        # Greedy agreement with HF on the GPU (bf16: near-ties can legitimately flip late tokens).
        ref = av.generate(inputs_embeds=emb, attention_mask=torch.ones(1, AV_PROMPT, dtype=torch.long, device=dev),
                          max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=0,
                          temperature=None, top_p=None, top_k=None)[0].tolist()
        got = fd.decode(av, emb, None, 32, stop_token_ids=[], prefix_len=SLOT)[0]
        agree = next((i for i, (a, b) in enumerate(zip(ref, got)) if a != b), len(ref))
        d["gpu_greedy_agreement"] = {"first_mismatch": agree, "of": len(ref), "graphs": fd.last_stats["graphs"],
                                     "graph_error": fd.last_stats["graph_error"]}
        runs = []
        for s in range(3):
            fd.decode(av, _av_embeds(av, 1, seed=10 + s), None, new_tokens, stop_token_ids=[], prefix_len=SLOT)
            runs.append(dict(fd.last_stats))
        runs.sort(key=lambda x: x["total_s"])
        med = runs[1]
        d["fast_b1_runs"] = runs
        base = d.get("eager_b1_ms_per_step")
        ms = 1000 * med["step_s"] / max(1, med["steps"])
        rep.add("av_b1_ms_per_step", ms, "ms", base, "captured decode step, batch 1, 27B nf4")
        if base:
            rep.add("av_b1_speedup", base / ms, "x", note="eager ms/step over fast ms/step")
        rep.add("av_first_token_s", med["first_token_s"], "s", note="prefill (cached prefix) + first token")
        rep.add("av_explanation_200_s", med["total_s"], "s",
                None if base is None else base * new_tokens / 1000, f"{new_tokens} new tokens, batch 1")
        rep.add("warmup_s", d["capture_b1_s"], "s", note="graph capture for batch 1 (more buckets: see details)")
    section("fast_b1", fast_b1)

    def sweep():
        d["step_ms_by_batch"] = {}
        for b in (1, 8, 16, 32, 64, 96, 160):
            ms, graphed = step_ms(av, b, fd._round_len(max_len))
            d["step_ms_by_batch"][b] = {"ms": round(ms, 2), "tok_s": round(1000 * b / ms), "graph": graphed}
    section("sweep", sweep)

    def eager_batch():
        d["eager_b150_ms_per_step"] = hf_ms_per_step(av, _av_embeds(av, n_explain), 12)
    section("eager_batch", eager_batch)
    gc.collect()
    _reset_peak()

    def build_others():
        t = time.perf_counter()
        m["subject"] = build(cfg62, mode, dev)
        d["build_subject_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        m["ar"] = build(cfg42, mode, dev)
        m["head"] = value_head(cfg42.hidden_size, dev)
        d["build_ar_s"] = round(time.perf_counter() - t, 1)
        d["three_models_gib"] = _gib(_alloc())
    if want & _NEEDS_THREE:
        rep.section("build_subject_ar", build_others, out)

    def explain_all(label: str, max_batch: int, rows_n: int = n_explain):
        fd.clear(av)
        gc.collect()
        _reset_peak()
        emb = _av_embeds(av, rows_n, seed=99)
        bucket = fd.bucket_for(min(max_batch, n_explain))
        t = time.perf_counter()
        fd.warmup(av, [1, bucket], max_len=max_len)
        cap = time.perf_counter() - t
        _reset_peak()
        t = time.perf_counter()
        rows = fd.decode(av, emb, None, new_tokens, stop_token_ids=[], max_batch=max_batch, prefix_len=SLOT)
        _sync()
        wall = time.perf_counter() - t
        toks = sum(len(r) for r in rows)
        d[f"explain_all_{label}"] = {"rows": rows_n, "max_batch": max_batch, "bucket": bucket, "wall_s": round(wall, 2),
                                     "tokens": toks, "tok_s": round(toks / wall), "capture_s": round(cap, 2),
                                     "peak_gib": _gib(_peak()[0]), "reserved_gib": _gib(_peak()[1]),
                                     "graphs": fd.last_stats["graphs"], "graph_error": fd.last_stats["graph_error"],
                                     # where the wall goes: prefill (the prompt, outside the graph) vs steps
                                     "prefill_s": round(fd.last_stats["prefill_s"], 2),
                                     "steps": fd.last_stats["steps"], "step_s": round(fd.last_stats["step_s"], 2)}
        return wall, toks, cap

    def explain_all_capped():
        # Largest bucket whose KV cache fits the memory target next to the three models.
        c = cfg62
        per_row = c.num_hidden_layers * 2 * c.num_key_value_heads * c.head_dim * 2 * fd._round_len(max_len)
        free = mem_budget_gib * GIB - _alloc() - 1.5 * GIB  # activations, logits, pools
        fits = max(1, int(free // per_row))
        mb = max(b for b in fd.BATCH_BUCKETS if b <= fits) if fits >= 1 else 1
        d["kv_bytes_per_row"] = per_row
        # Small buckets take minutes for all 150: time two buckets' worth and scale (linear in chunks).
        rows_n = min(n_explain, 2 * mb)
        wall, toks, cap = explain_all("capped", mb, rows_n)
        chunks_all, chunks_run = -(-n_explain // mb), -(-rows_n // mb)
        wall, toks = wall * chunks_all / chunks_run, toks * n_explain // rows_n
        d["explain_all_capped"]["extrapolated_wall_s"] = round(wall, 2)
        base = d.get("eager_b150_ms_per_step")
        base_tok_s = None if not base else 1000 * n_explain / base
        rep.add("explain_all_150_s", wall, "s",
                None if not base else base * new_tokens / 1000,
                f"{n_explain} x {new_tokens} tokens, max_batch {mb} (fits {mem_budget_gib:g} GiB)"
                + ("" if rows_n == n_explain else f"; timed {rows_n} rows, scaled by chunks"))
        rep.add("explain_all_av_tok_s", toks / wall, "tok/s", base_tok_s, f"max_batch {mb}")
        rep.add("peak_gib_three_models_explain_all", d["explain_all_capped"]["peak_gib"], "GiB",
                note="subject 62 + AV 62 + AR 42 layers nf4, during explain-all (capped)")
        rep.add("warmup_s", d.get("capture_b1_s", 0) + cap, "s", note=f"graph capture, buckets 1 and {mb}")
    section("explain_all_capped", explain_all_capped)

    def explain_all_parked():
        from .gpu_parked import run_section

        run_section(rep, av, m, cfg62, max_len, new_tokens, n_explain, mem_budget_gib)
    section("explain_all_parked", explain_all_parked)

    def explain_all_fast():
        wall, toks, _ = explain_all("one_batch", n_explain)
        base = d.get("eager_b150_ms_per_step")
        rep.add("explain_all_150_s_one_batch", wall, "s", None if not base else base * new_tokens / 1000,
                f"all {n_explain} rows in one bucket")
        rep.add("explain_all_av_tok_s_one_batch", toks / wall, "tok/s", None if not base else 1000 * n_explain / base)
        rep.add("peak_gib_one_batch", d["explain_all_one_batch"]["peak_gib"], "GiB")
        fd.clear(av)
        gc.collect()
        _reset_peak()
    section("explain_all_one_batch", explain_all_fast)

    subj = m.get("subject")

    def chat():
        g = torch.Generator(device=dev).manual_seed(3)
        ids = torch.randint(10, cfg62.vocab_size - 10, (1, 100), device=dev, generator=g)
        emb = subj.get_input_embeddings()(ids)
        base = hf_ms_per_step(subj, emb, 24)
        fd.warmup(subj, [1], max_len=100 + 256)
        fd.decode(subj, emb, None, 16, stop_token_ids=[])
        t = time.perf_counter()
        rows = fd.decode(subj, emb, None, 256, stop_token_ids=[])
        wall = time.perf_counter() - t
        rep.add("subject_chat_tok_s", len(rows[0]) / wall, "tok/s", 1000 / base,
                "fast_decode on the subject, 100-token prompt, 256 new; baseline eager generate")
        fd.clear(subj)
    section("subject_chat", chat)

    from .gpu_steer import run_section as steered_continuation  # steer (issue 13)

    if "steered_continuation" in want:
        steered_continuation(rep, out, subj, layer_k, cfg62.vocab_size, dev, _sync)

    def capture():
        ids = torch.randint(10, cfg62.vocab_size - 10, (1, 1000), device=dev)
        got = {}
        hook = subj.model.layers[layer_k].register_forward_hook(lambda mod, i, o: got.__setitem__("h", o[0] if isinstance(o, tuple) else o))
        try:
            def fwd():
                with torch.inference_mode():
                    logits = subj(input_ids=ids, use_cache=False).logits
                    top = torch.topk(logits[0].float().softmax(-1), 5, dim=-1)
                    got["h"].float().cpu(), top.indices.cpu()
            fwd()
            rep.add("layer_k_capture_1000_s", median_time(fwd, 3, _sync), "s",
                    note="one prefill of 1,000 tokens, hook at layer 41, activations + top-5 to CPU")
        finally:
            hook.remove()
    section("capture", capture)

    def ar_score():
        ar, head = m["ar"], m["head"]
        n_tok = 230  # AR template (~20) + a ~200-token explanation

        def score(batch):
            ids = torch.randint(10, cfg42.vocab_size - 10, (batch, n_tok), device=dev)
            with torch.inference_mode():
                h = ar.model(input_ids=ids, use_cache=False).last_hidden_state[:, -1]
                head(h).float().cpu()
        score(1)
        one = median_time(lambda: score(1), 5, _sync)
        chunk = min(50, n_explain)
        t = median_time(lambda: [score(chunk) for _ in range(n_explain // chunk)], 1, _sync)
        rep.add("ar_score_one_s", one, "s", note=f"batch 1, {n_tok} tokens, 42 layers + value head")
        rep.add("ar_score_batched_per_expl_s", t / n_explain, "s", one, f"{n_explain} in batches of {chunk}")
    section("ar_score", ar_score)

    def int4_cmp():
        from .gpu_int4 import int4_compare

        int4_compare(rep, av, cfg62, max_len, new_tokens, n_explain)
    if mode == "nf4" or DEV["tiny"]:
        section("int4_compare", int4_cmp)

    def int4_b1():
        from .gpu_int4 import int4_compare

        int4_compare(rep, av, cfg62, max_len, new_tokens, n_explain, batches=(1,))
    if mode == "nf4" or DEV["tiny"]:
        section("int4_b1", int4_b1)

    def compile_probe():
        from .gpu_int4 import compile_probe as probe

        probe(rep, av, max_len)
    section("compile_probe", compile_probe)

    def denest():
        # Experiment: bnb stores absmax double-quantised and dequantises it on every call.
        # Storing it in fp32 (+~1.3 GiB per 27B model) removes that work from each step.
        import bitsandbytes.functional as F

        for mod in av.modules():
            qs = getattr(getattr(mod, "weight", None), "quant_state", None)
            if qs is not None and qs.nested:
                qs.absmax = F.dequantize_blockwise(qs.absmax, qs.state2) + qs.offset
                qs.nested, qs.state2, qs.offset = False, None, None
        d["denest_step_ms_by_batch"] = {}
        for b in (1, 16, 160):
            ms, graphed = step_ms(av, b, fd._round_len(max_len))
            d["denest_step_ms_by_batch"][b] = {"ms": round(ms, 2), "tok_s": round(1000 * b / ms), "graph": graphed}
    if dev == "cuda":
        section("denest_experiment", denest)

    try:  # graphs torch.compile made in this process (fusion.py compiles decode shapes only)
        from torch._dynamo.utils import counters

        d["dynamo_unique_graphs"] = int(counters["stats"]["unique_graphs"])
    except Exception:
        pass
    start_ready = sum(d.get(k, 0) for k in ("build_av_s", "build_subject_s", "build_ar_s"))
    cap = d.get("explain_all_capped", {}).get("capture_s", 0) + d.get("capture_b1_s", 0)
    rep.add("start_to_ready_s", start_ready + cap, "s",
            note="build 3 random-weight nf4 models on GPU + graph capture; loading real checkpoints from disk is slower")
