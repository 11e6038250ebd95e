"""`nla-tui compare SESSION I J [--out FILE.json]`: cos(a, b) and the explanations of
a − b and b − a, each scored by the AR. The same token twice (a zero difference) is
refused with a message before any model loads."""

from __future__ import annotations

import argparse

from ..core.errors import InputError
from .common import add_model_args
from .session_engine import add_sampling_args, check_token, load_engine, sampling, write_json
from .output import say


def add_subparser(sub) -> None:
    c = sub.add_parser("compare", help="explain the difference of two tokens' activations (a - b and b - a)")
    add_model_args(c)
    c.add_argument("session", help="session directory (or its session.json)")
    c.add_argument("i", type=int, help="token A")
    c.add_argument("j", type=int, help="token B")
    c.add_argument("--out", help="also write the comparison as JSON here")
    add_sampling_args(c)
    c.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    from ..core.steer_results import compare_activations
    from .common import load_session_noting

    samp = sampling(args)  # range-checked before any model loads
    session = load_session_noting(args.session)
    check_token(session, args.i, "Token")
    check_token(session, args.j, "Token")
    if session.activations is not None:  # a == b needs no model: say so at once
        quick = compare_activations(session.activations, args.i, args.j)
        if quick.message:
            raise InputError(quick.message)
    from ..core.runtime.steer import compare

    engine = load_engine(session, args)
    c = compare(engine, args.i, args.j, samp)
    if c.message:
        raise InputError(c.message)
    tok = lambda i: session.tokens[i].text  # noqa: E731
    say(f"A = token {c.i} {tok(c.i)!r}, B = token {c.j} {tok(c.j)!r}: cos(a, b) {c.cos:.4f}, "
          f"|a - b| {c.diff_norm:.1f}")
    for name, e in (("a - b", c.a_minus_b), ("b - a", c.b_minus_a)):
        s = e.score
        fve = "" if s.fve_nrm is None else f", fve_nrm {s.fve_nrm:.3f}"
        say(f"\n{name}: {e.text}\n  AR score: cos {s.cos:.3f}{fve} ({s.label})")
    if engine.info.untrained_av:
        say("\nNote: the demo AV is untrained; its text is NOT a faithful explanation.")
    if args.out:
        say(f"comparison written to {write_json(args.out, c.to_json())}")
    return 0
