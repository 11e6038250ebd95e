"""`nla-tui explain-vectors FILE.safetensors|.npy [--name KEY] [--preset …] [--out FILE.json]`:
explain and score each row (an SAE decoder direction, a steering vector, a mean
difference). The file, its width (against the AV's sidecar) and finiteness are checked
before any model loads. From Python: core.nla.vectors.explain_file."""

from __future__ import annotations

import argparse
import sys

from ..core.errors import InputError
from .common import add_model_args, engine_options, progress
from .session_engine import add_sampling_args, sampling, write_json
from .output import say


def add_subparser(sub) -> None:
    v = sub.add_parser("explain-vectors", help="explain and score each row of a .npy / .safetensors file",
                       description="Explain any vector (an SAE decoder direction, a steering vector, a mean "
                                   "difference): each row goes through the AV and is scored by the AR.")
    add_model_args(v)
    v.add_argument("file", help=".npy or .safetensors: one vector [d_model] or rows [N, d_model]")
    v.add_argument("--name", help="tensor name in a .safetensors file holding several")
    v.add_argument("--out", help="also write the explanations as JSON here")
    v.add_argument("--av-prompt", help="custom AV prompt containing <INJECT>")
    v.add_argument("--batch-size", type=int, default=None,
                   help="rows per AV batch (default: 16 on CPU; on CUDA as many as free memory allows, up to 160)")
    add_sampling_args(v)
    v.set_defaults(func=cmd_explain_vectors)


def expected_width(opts) -> int:
    """d_model from the AV's sidecar: the width check runs before any model loads."""
    from ..core.models.loading import resolve_checkpoint
    from ..core.nla.presets import resolve_sources
    from ..core.nla.sidecar import read_sidecar

    _, sources = resolve_sources(opts, progress)
    return read_sidecar(resolve_checkpoint(sources["av"]).path).d_model


def print_rows(exps, norms) -> None:
    """One table row per vector: its norm, the AR's score and the explanation."""
    say(f"\n{'row':>4} {'norm':>10} {'cos':>6} {'fve':>6} {'verdict':<9} explanation")
    for e, n in zip(exps, norms):
        s = e.score
        fve = f"{s.fve_nrm:6.2f}" if s and s.fve_nrm is not None else "     -"
        say(f"{e.index:>4} {n:>10.2f} {s.cos if s else float('nan'):6.3f} {fve} {s.label if s else '':<9} "
            f"{e.text[:80]}", keep_layout=False)


def cmd_explain_vectors(args: argparse.Namespace) -> int:
    import numpy as np

    from ..core.nla.vectors import check_rows, load_vectors
    from ..core.runtime.engine import Engine

    samp = sampling(args)  # range-checked before any model loads
    if args.batch_size is not None and args.batch_size < 1:
        raise InputError(f"--batch-size is {args.batch_size}; it must be a whole number of at least 1.")
    rows = load_vectors(args.file, args.name)
    opts = engine_options(args)
    rows = check_rows(rows, expected_width(opts))
    engine = Engine(opts)
    engine.load(progress)
    done = [0]

    def on_batch(exps):
        done[0] += len(exps)
        say(f"[explain] {done[0]}/{len(rows)}", file=sys.stderr, flush=True)

    exps = engine.explain_rows(rows, samp, args.av_prompt, batch_size=args.batch_size, on_batch=on_batch)
    norms = np.linalg.norm(rows, axis=1)
    print_rows(exps, norms)
    if engine.info.untrained_av:
        say("\nNote: the demo AV is untrained; its text is NOT a faithful explanation of the vector.")
    if args.out:
        doc = {"file": str(args.file), "name": args.name, "models": engine.info.to_json(),
               "rows": [dict(e.to_json(), row=e.index, norm=float(n)) for e, n in zip(exps, norms)]}
        say(f"written to {write_json(args.out, doc)}")
    return 0
