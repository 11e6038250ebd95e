"""CPU benchmark on the demo preset (Gemma 3 270M, fp32) through the real Engine.

Baselines are HF `generate` (eager, dynamic cache) on the same embeddings in the
same run. CPU timings move with machine load; quote ratios, not absolutes.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import numpy as np
import torch

from nla_tui.core.models import fast_decode as fd

from .common import Report, median_time

os.environ.setdefault("NLA_TUI_NO_CACHE", "1")  # measure the models, not the on-disk cache
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _hf_ms_per_step(model, emb, n: int) -> float:
    def gen(k):
        model.generate(inputs_embeds=emb, attention_mask=torch.ones(emb.shape[:2], dtype=torch.long),
                       max_new_tokens=k, min_new_tokens=k, do_sample=False, pad_token_id=0,
                       temperature=None, top_p=None, top_k=None)
    with torch.inference_mode():
        t2 = median_time(lambda: gen(2), 1)
        tn = median_time(lambda: gen(n), 1)
    return 1000 * (tn - t2) / (n - 2)


def run(rep: Report, out: Path, new_tokens: int = 48, n_explain: int = 32) -> None:
    from nla_tui.core.runtime.engine import Engine
    from nla_tui.core.types import Message, Sampling

    d = rep.details
    eng: dict = {}

    def load():
        t = time.perf_counter()
        e = Engine.from_options(preset="demo", device="cpu", quant="fp32")
        e.load()
        rep.add("start_to_ready_s", time.perf_counter() - t, "s", note="Engine.load, demo pair already built")
        eng["e"] = e
    rep.section("load", load, out)
    e = eng["e"]
    av = e.av

    def chat():
        before = len(e.tokens)
        t = time.perf_counter()
        e.chat("Tell me a short story about a lighthouse keeper.", max_new_tokens=32)
        wall = time.perf_counter() - t
        new = sum(1 for tk in e.tokens[before:] if tk.role == "model")
        rep.add("subject_chat_tok_s", new / wall, "tok/s", note="Engine.chat incl. capture (subject via HF generate)")
    rep.section("chat", chat, out)

    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((n_explain, av.meta.d_model)).astype(np.float32)

    def av_b1():
        emb = av.build_embeds(vecs[:1])
        base = _hf_ms_per_step(av.model, emb, 12)
        _, slot = av.prompt_ids(None)
        fd.decode(av.model, emb, None, 4, prefix_len=slot)  # fills the prefix cache, as the app would
        fd.decode(av.model, emb, None, new_tokens, prefix_len=slot)
        s = dict(fd.last_stats)
        ms = 1000 * s["step_s"] / max(1, s["steps"])
        rep.add("av_b1_ms_per_step", ms, "ms", base, "static cache, no graphs on CPU")
        rep.add("av_first_token_s", s["first_token_s"], "s", note="prefill (cached prefix) + first token")
        rep.add(f"av_explanation_{new_tokens}_s", s["total_s"], "s", base * new_tokens / 1000,
                f"{new_tokens} new tokens (no stop), batch 1")
    rep.section("av_b1", av_b1, out)

    def explain_all():
        emb = av.build_embeds(vecs)
        base = _hf_ms_per_step(av.model, emb, 6)
        t = time.perf_counter()
        rows = fd.decode(av.model, emb, None, new_tokens, max_batch=n_explain)
        wall = time.perf_counter() - t
        toks = sum(len(r) for r in rows)
        rep.add(f"explain_all_{n_explain}_av_s", wall, "s", base * new_tokens / 1000,
                f"{n_explain} x up to {new_tokens} tokens, one batch")
        rep.add("explain_all_av_tok_s", toks / wall, "tok/s", 1000 * n_explain / base)
        t = time.perf_counter()
        e.explain(list(range(min(n_explain, len(e.tokens)))), Sampling(max_new_tokens=new_tokens),
                  batch_size=n_explain)
        rep.add(f"engine_explain_{n_explain}_s", time.perf_counter() - t, "s",
                note="Engine.explain: AV (fast_decode) + AR scoring + parsing")
    rep.section("explain_all", explain_all, out)

    def capture():
        text = " ".join(["The harbour lights flickered as the fishing boats came home."] * 90)
        msgs = [Message(role="user", content="Summarise this:"), Message(role="assistant", content=text)]
        e.set_conversation(msgs)
        d["capture_tokens"] = len(e.tokens)
        rep.add("layer_k_capture_s", median_time(lambda: e.set_conversation(msgs), 2), "s",
                note=f"set_conversation of {len(e.tokens)} tokens (prefill + layer K + top-5)")
    rep.section("capture", capture, out)

    def ar():
        texts = ["A lighthouse keeper watches ships at night."] * n_explain
        one = median_time(lambda: e.ar.score(texts[:1], vecs[:1]), 3)
        t = median_time(lambda: e.ar.score(texts, vecs), 1)
        rep.add("ar_score_one_s", one, "s")
        rep.add("ar_score_batched_per_expl_s", t / n_explain, "s", one, f"{n_explain} in one batch")
    rep.section("ar", ar, out)
    rep.add("peak_rss_gib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "GiB",
            note="three demo models, fp32, CPU")
