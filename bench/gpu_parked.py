"""GPU suite section: explain-all within the memory budget with the subject and AR parked
(nla_tui/core/models/parking.py), against the unparked capped path of the same run (issue 14).

    python -m bench gpu --sections explain_all_parked   # runs explain_all_capped too (its baseline)
"""

from __future__ import annotations

import gc
import time

import torch

from nla_tui.core.models import fast_decode as fd

from .gpu_common import DEV, GIB, SLOT, _alloc, _av_embeds, _gib, _peak, _reset_peak, _sync, cap_memory


def run_section(rep, av, m: dict, cfg62, max_len: int, new_tokens: int, n_explain: int, mem_budget_gib: float) -> None:
    dev = DEV["device"]
    d = rep.details
    # The product's path (nla_tui/core/models/parking.py): decide from the memory free within the
    # budget, park the subject + AR (+ value head) in pinned host memory, size the batch from
    # what is free then, decode all rows, bring them back. The cap is enforced by the allocator.
    from nla_tui.core.models import parking as pk

    c = cfg62
    per_row = c.num_hidden_layers * 2 * c.num_key_value_heads * c.head_dim * 2 * fd._round_len(max_len) \
        + 8 * c.vocab_size
    budget = int(mem_budget_gib * GIB)
    for model in (av, m["subject"], m["ar"]):
        fd.clear(model)
    gc.collect()
    _reset_peak()
    devt = torch.device(dev if dev != "cuda" else "cuda:0")
    others = {"subject": m["subject"], "ar": m["ar"], "head": m["head"]}
    plan = pk.plan_explain(n_explain, per_row, max(0, budget - _alloc()), pk.bytes_on(others.values(), devt),
                           pk.host_available())
    rec = d["explain_all_parked"] = {"plan_park": plan.park, "plan_batch": plan.batch, "reason": plan.reason,
                                     "budget_gib": mem_budget_gib}
    emb = _av_embeds(av, n_explain, seed=99)
    cap_memory(mem_budget_gib)
    try:
        t0 = time.perf_counter()
        with pk.parked(others, devt) as sizes:
            rec["park_s"] = round(time.perf_counter() - t0, 2)
            rec["parked_gib"] = _gib(sum(sizes.values()))
            free = pk.free_bytes(devt) if dev == "cuda" else 64 * GIB  # as the product measures it
            mb = pk.rows_that_fit(free, per_row, 160, n_explain, pk.KV_SHARE_PARKED)
            t = time.perf_counter()
            fd.warmup(av, [mb], max_len=max_len)
            rec["capture_s"] = round(time.perf_counter() - t, 2)
            t = time.perf_counter()
            rows = fd.decode(av, emb, None, new_tokens, stop_token_ids=[], max_batch=mb, prefix_len=SLOT)
            _sync()
            decode_s = time.perf_counter() - t
            fd.clear(av)
            t_back = time.perf_counter()
        rec["unpark_s"] = round(time.perf_counter() - t_back, 2)
    finally:
        cap_memory(None)
    wall = time.perf_counter() - t0  # park + capture + decode + unpark: all of it
    toks = sum(len(r) for r in rows)
    rec.update(max_batch=mb, decode_s=round(decode_s, 2), wall_s=round(wall, 2), tokens=toks,
               peak_gib=_gib(_peak()[0]), reserved_gib=_gib(_peak()[1]), graphs=fd.last_stats.get("graphs"))
    capped = d.get("explain_all_capped", {})
    base_wall = capped.get("extrapolated_wall_s")
    rep.add("explain_all_150_parked_s", wall, "s", base_wall,
            f"{n_explain} x {new_tokens} tokens within {mem_budget_gib:g} GiB, subject+AR parked, batch {mb}; "
            f"includes park {rec['park_s']} s, capture, unpark {rec['unpark_s']} s; baseline: unparked, same cap")
    rep.add("explain_all_parked_av_tok_s", toks / wall, "tok/s",
            None if not base_wall else capped["tokens"] * n_explain / capped["rows"] / base_wall)
    rep.add("peak_gib_explain_all_parked", rec["peak_gib"], "GiB", note="allocator cap = the budget")
