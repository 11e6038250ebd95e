"""The rest of `bench multigpu`: one card against two, a forced split, two AV replicas."""

from __future__ import annotations


import torch

from nla_tui.core.models import fast_decode as fd

from . import gpu
from .multigpu import CARD_GIB, ONE_CARD_GIB, PLANS, decode_replicas


def run_more(rep, out, m, d, new_tokens, n_explain, cards, _load, _reset, _cap, _explain_rows, _per_card, _where):
    cfg_for = gpu._cfg
    dev_ok = cards >= 1 or gpu.DEV["device"] != "cuda"
    device0 = "cuda:0" if gpu.DEV["device"] == "cuda" else "cpu"

    def one_card():
        # Today's single 48 GB card: the three models whole on card 0 (as `--device cuda:0`; the
        # automatic plan, which reserves a 4k-token subject context, asks for 45.3 GiB) capped at
        # 44 GiB, explain-all sized and parked by the same rule as on two cards.
        from .multigpu import _explain_all_plan, _works

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
