"""Issue 23: what the readouts beside the AV cost per token, demo preset on CPU (fp32).

    python -m bench.readouts --out bench/results/readouts-cpu.json

- logit lens: one token's 18 layer residuals through the final norm + unembedding
  (Engine.logit_lens, uncached), against the baseline of the AV + AR explaining that token
  (`e`), measured in the same run; plus what keeping every layer's residual adds to a capture
  (the capture with the residuals vs the same capture with the lens's budget at 0);
- per-sentence fidelity: one batched AR pass over an explanation's sentences alone and
  left out (Engine.with_sentence_fidelity), against the explanation's own AR score.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from .common import Report, machine, median_time

os.environ.setdefault("NLA_TUI_NO_CACHE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.readouts")
    p.add_argument("--out", type=Path, default=Path("bench/results/readouts-cpu.json"))
    p.add_argument("--tokens", type=int, default=4, help="positions measured (median)")
    args = p.parse_args(argv)

    from nla_tui.core.nla.sentences import split_sentences
    from nla_tui.core.runtime.engine import Engine
    from nla_tui.core.types import Message, Sampling

    rep = Report("readouts: logit lens and per-sentence fidelity, demo preset (Gemma 3 270M, fp32)",
                 machine("cpu"), "python -m bench.readouts " + " ".join(argv or sys.argv[1:]), apply_targets=False)
    eng = Engine.from_options(preset="demo", device="cpu", quant="fp32")
    eng.load()
    msgs = [Message("user", "The Eiffel Tower is in which city, and how tall is it?"),
            Message("assistant", "The Eiffel Tower is in Paris. It is about 330 metres tall.")]
    eng.set_conversation(msgs)
    n = len(eng.tokens)
    positions = list(range(n - 1, n - 1 - args.tokens, -1))
    sampling = Sampling(temperature=0.0, max_new_tokens=48)
    rep.details.update(tokens=n, positions=positions, precision="fp32", layers=len(eng.subject.decoder.layers))

    def lens():
        def one(i):
            eng._lens.pop(i, None)
            eng.logit_lens(i)
        per = [median_time(lambda i=i: one(i), 3) for i in positions]
        explain = [median_time(lambda i=i: eng.explain_vectors(eng.activations[i][None], sampling, indices=[i]), 1)
                   for i in positions[:2]]
        rep.add("logit_lens_ms_per_token", 1000 * sorted(per)[len(per) // 2], "ms",
                baseline=1000 * min(explain), note="baseline: AV + AR explaining the same token (48 tokens)")
        with_res = median_time(lambda: eng.subject.capture([t.token_id for t in eng.tokens]), 3)
        os.environ["NLA_TUI_LENS_MAX_BYTES"] = "0"
        try:
            without = median_time(lambda: eng.subject.capture([t.token_id for t in eng.tokens]), 3)
        finally:
            del os.environ["NLA_TUI_LENS_MAX_BYTES"]
        rep.add("capture_ms_per_token_with_residuals", 1000 * with_res / n, "ms", baseline=1000 * without / n,
                note=f"baseline: the same capture keeping layer K only ({n} tokens)")

    def sentences():
        per, own, count = [], [], []
        for i in positions:
            exp = eng.explain_vectors(eng.activations[i][None], sampling, indices=[i])[0]
            count.append(len(split_sentences(exp.text)))
            per.append(median_time(lambda: eng.with_sentence_fidelity(replace(exp, sentences=None)), 3))
            own.append(median_time(lambda: eng.ar.score([exp.text], eng.activations[i][None]), 3))
        rep.add("sentence_fidelity_ms_per_token", 1000 * sorted(per)[len(per) // 2], "ms",
                baseline=1000 * sorted(own)[len(own) // 2],
                note="one AR pass over 2n texts; baseline: the explanation's own AR score (1 text)")
        rep.details["sentences_per_explanation"] = sorted(count)[len(count) // 2]

    rep.section("lens", lens, args.out)
    rep.section("sentences", sentences, args.out)
    print(rep.table())
    return 1 if rep.errors else 0


if __name__ == "__main__":
    sys.exit(main())
