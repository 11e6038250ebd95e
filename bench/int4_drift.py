"""AR-score drift of the weight formats on the demo pair (Gemma 3 270M subject, AV, AR), CPU.

    python -m bench.int4_drift --out bench/results/int4-drift-cpu.json

For each format (fp32 reference, bf16, bitsandbytes nf4, nla-tui int4 on the portable kernel,
which computes what gemlite computes up to summation order) the demo engine loads all three
models in that format, teacher-forces the same conversation and explains the same positions
greedily. Reported per format: mean fve_nrm over the positions (end to end), the mean
|Δ fve_nrm| against fp32, how many explanations are word-for-word those of fp32, and the AR
alone: the fp32 explanations and activations scored by this format's AR (|Δ| against fp32).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

FORMATS = ("fp32", "bf16", "nf4", "int4")
MESSAGES = [("user", "What is the capital of France, and why is it famous?"),
            ("assistant", "The capital of France is Paris. It is famous for the Eiffel Tower, the Louvre "
                          "museum, its cafés and its long history as a centre of art and science.")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.int4_drift")
    p.add_argument("--out", default="bench/results/int4-drift-cpu.json")
    p.add_argument("--positions", type=int, default=24)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--formats", default=",".join(FORMATS))
    a = p.parse_args(argv)
    os.environ.setdefault("NLA_TUI_NO_CACHE", "1")
    import torch

    from nla_tui.core.runtime.engine import Engine
    from nla_tui.core.types import Message, Sampling

    torch.manual_seed(0)
    sampling = Sampling(max_new_tokens=a.new_tokens)
    msgs = [Message(role=r, content=c) for r, c in MESSAGES]
    res: dict = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                             "python": sys.version.split()[0]},
                 "command": "python -m bench.int4_drift " + " ".join(argv if argv is not None else sys.argv[1:]),
                 "positions": a.positions, "new_tokens": a.new_tokens, "formats": {}}
    ref = None
    for fmt in a.formats.split(","):
        t = time.perf_counter()
        eng = Engine.from_options(preset="demo", device="cpu", quant=fmt, cache=False)
        eng.load()
        eng.set_conversation(msgs)
        idx = list(range(min(a.positions, len(eng.tokens))))
        exps = eng.explain(idx, sampling, batch_size=8)
        rec = {"fve": [e.score.fve_nrm if e.score else None for e in exps], "texts": [e.text for e in exps],
               "load_explain_s": round(time.perf_counter() - t, 1)}
        if ref is None:
            ref = {"fve": rec["fve"], "texts": rec["texts"], "acts": eng.activations[idx].copy()}
        else:
            rec["same_text_as_fp32"] = sum(x == y for x, y in zip(rec["texts"], ref["texts"]))
            rec["mean_abs_dfve_e2e"] = statistics.fmean(abs(x - y) for x, y in zip(rec["fve"], ref["fve"]))
            ar_only = eng.ar.score(ref["texts"], ref["acts"])
            rec["ar_only_fve"] = [s.fve_nrm for s in ar_only]
            rec["mean_abs_dfve_ar_only"] = statistics.fmean(abs(s.fve_nrm - y) for s, y in zip(ar_only, ref["fve"]))
        rec["mean_fve"] = statistics.fmean(rec["fve"])
        if fmt == "int4":
            from nla_tui.core.models.int4 import kernel

            rec["kernel"] = kernel()
        res["formats"][fmt] = rec
        print(fmt, {k: v for k, v in rec.items() if k not in ("fve", "texts", "ar_only_fve")}, flush=True)
        del eng
        gc.collect()
        Path(a.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
