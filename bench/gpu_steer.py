"""GPU suite section: one steered continuation (steer, issue 13) against a plain one,
on the 27B-shaped subject. Both through fast_decode from the same 100-token prompt;
the steered one runs with the steering hook on layer K (span onward: every new
position gets v), in its own captured graph (graph_tag "steer").

    python -m bench gpu            # the section "steered_continuation"
    python -m bench gpu --dry-run  # tiny config on CPU: checks the script
"""

from __future__ import annotations

import time

import torch

from nla_tui.core.models import fast_decode as fd
from nla_tui.core.models.steering import NO_END, SteeringHook

PROMPT = 100
NEW = 64  # a steered continuation (the TUI default is 32)


def run_section(rep, out, subj, layer_k: int, vocab: int, dev: str, sync) -> None:
    d = rep.details

    def steered():
        g = torch.Generator(device=dev).manual_seed(7)
        ids = torch.randint(10, vocab - 10, (1, PROMPT), device=dev, generator=g)
        emb = subj.get_input_embeddings()(ids)
        layer = subj.model.layers[layer_k]
        hook = SteeringHook(subj.config.hidden_size, next(layer.parameters()).device)
        v = torch.randn(subj.config.hidden_size, generator=torch.Generator().manual_seed(1))
        hook.aim(v / v.norm() * 100.0, PROMPT - 1, NO_END)

        def plain():
            return fd.decode(subj, emb, None, NEW, stop_token_ids=[])[0]

        def steer():
            handle = layer.register_forward_hook(hook, with_kwargs=True)
            try:
                return fd.decode(subj, emb, None, NEW, stop_token_ids=[], graph_tag="steer")[0]
            finally:
                handle.remove()

        times = {}
        for name, fn in (("plain", plain), ("steered", steer)):
            fn()  # warm-up: graph capture for this tag
            stats = fd.last_stats
            runs = []
            for _ in range(3):
                sync()
                t = time.perf_counter()
                toks = fn()
                sync()
                runs.append(time.perf_counter() - t)
            times[name] = sorted(runs)[1]
            d[f"steer_{name}"] = {"wall_s": [round(r, 3) for r in runs], "tokens": len(toks),
                                  "graphs": stats["graphs"], "graph_error": stats["graph_error"]}
        same_len = d["steer_plain"]["tokens"] == d["steer_steered"]["tokens"] == NEW
        rep.add("steered_continuation_s", times["steered"], "s", times["plain"],
                f"{NEW} new tokens after a {PROMPT}-token prompt, hook at layer {layer_k} (span onward); "
                f"baseline: the same plain fast_decode continuation" + ("" if same_len else " (lengths differ!)"))
        fd.clear(subj)

    rep.section("steered_continuation", steered, out)
