"""`nla-tui check`: sidecars, configs and tokenizers only; no weights are loaded.
`nla-tui check --fidelity`: load the models and run the quantisation self-check
(core/nla/fidelity.py): does the running precision move the readouts?"""

from __future__ import annotations

import argparse
import sys

from ..core.errors import InputError
from ..terminal_text import visible
from .common import EXIT_USER_ERROR, add_model_args, engine_options, progress
from .output import say

MIB = 1 << 20


def add_subparser(sub) -> None:
    c = sub.add_parser("check", help="load tokenizers and sidecars only; report whether the pair is consistent "
                                     "(--fidelity: load the models and check what their precision costs)")
    add_model_args(c)
    f = c.add_argument_group("fidelity self-check")
    f.add_argument("--fidelity", action="store_true",
                   help="load the models in their running precision and compare the subject's activations, the "
                        "explanations' fve and the AR's scores against the reference precision (bf16 on CUDA, "
                        "fp32 on CPU); cached per models and precisions, so it runs once")
    f.add_argument("--recheck", action="store_true", help="with --fidelity: run it again even if cached")
    f.add_argument("--positions", type=int, help="with --fidelity: positions to explain in the fixed conversation "
                                                 "(default 12)")
    f.add_argument("--explain-tokens", type=int, help="with --fidelity: greedy explanation length (default 24)")
    f.add_argument("--messages", help="with --fidelity: a transcript (as `run --messages`) read beside the fixed "
                                      "conversation (its first 256 tokens)")
    f.add_argument("--reference-budget-mib", type=int,
                   help="with --fidelity: hold the reference models to this much memory of the execution device "
                        "(the card, or host memory on CPU); the rest is offloaded (default: what is free)")
    c.set_defaults(func=cmd_check)


def _check_fidelity_args(args: argparse.Namespace) -> None:
    used = [f"--{n.replace('_', '-')}" for n in ("recheck", "positions", "explain_tokens", "messages",
                                                  "reference_budget_mib") if getattr(args, n)]
    if used and not args.fidelity:
        raise InputError(f"{', '.join(used)} only applies to the fidelity check: add --fidelity.")
    for name, low in (("positions", 1), ("explain_tokens", 1), ("reference_budget_mib", 1)):
        v = getattr(args, name)
        if v is not None and v < low:
            raise InputError(f"--{name.replace('_', '-')} must be at least {low} (got {v}).")


def cmd_check(args: argparse.Namespace) -> int:
    _check_fidelity_args(args)
    if args.fidelity:
        return cmd_fidelity(args)
    from ..core.nla.check import check_pair

    ok = check_pair(engine_options(args), lambda line: say(visible(line)))
    return 0 if ok else EXIT_USER_ERROR


def cmd_fidelity(args: argparse.Namespace) -> int:
    options = engine_options(args)
    messages = None
    if args.messages:
        from ..core.store.transcript import load_transcript

        messages = load_transcript(args.messages)  # a bad file is refused before any model loads
    from ..core.runtime.engine import Engine
    from ..core.runtime.fidelity_check import check_fidelity

    engine = Engine(options)
    info = engine.load(progress)
    say(visible(f"models: subject {info.subject}, AV {info.av}, AR {info.ar}; precision {info.quant} on "
                f"{info.device}"), file=sys.stderr)
    if messages:
        engine.set_conversation(messages)
    budget = args.reference_budget_mib * MIB if args.reference_budget_mib else None
    report, cached = check_fidelity(engine, recheck=args.recheck, positions=args.positions,
                                    tokens=args.explain_tokens, budget=budget,
                                    progress=lambda s: say(visible(f"[fidelity] {s}"), file=sys.stderr, flush=True))
    if cached:
        say(f"(cached result of {report.created}; --recheck runs it again)", file=sys.stderr)
    for line in report.table():
        say(visible(line))
    return 0
