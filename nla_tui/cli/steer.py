"""`nla-tui steer SESSION --token I --edit "…" [--alpha A] [--span here|onward] [--max-new-tokens N] [--out FILE.json]`:
what if the model had thought otherwise at token I? Checks everything it can before
any model loads; the steered continuation is kept in the session's `steered` list."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.steer_jobs import DEFAULT_ALPHA
from ..core.types import CONTINUATION_TOKENS
from .common import add_model_args
from .session_engine import add_sampling_args, check_token, load_engine, sampling, write_json
from .output import say


def add_subparser(sub) -> None:
    s = sub.add_parser("steer", help="steer the subject at a token toward an edited explanation",
                       description="Regenerate a saved session's conversation from token I with the steering "
                                   "vector AR(edited) - AR(original), scaled to the activation's norm x alpha, "
                                   "added at layer K. Prints next-token top-5 before/after and both "
                                   "continuations; the result is kept in the session.")
    add_model_args(s)
    s.add_argument("session", help="session directory (or its session.json)")
    s.add_argument("--token", type=int, required=True, help="token index to steer at")
    s.add_argument("--edit", required=True, help="the edited explanation")
    s.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                   help=f"strength, x the activation's norm (default {DEFAULT_ALPHA:g})")
    s.add_argument("--span", default="here", choices=["here", "onward"],
                   help="here: that token only; onward: it and every later position (default here)")
    s.add_argument("--max-new-tokens", type=int, default=CONTINUATION_TOKENS,
                   help=f"continuation length (default {CONTINUATION_TOKENS})")
    s.add_argument("--out", help="also write the result as JSON here")
    add_sampling_args(s)
    s.set_defaults(func=cmd_steer)


def cmd_steer(args: argparse.Namespace) -> int:
    from ..core.runtime.steer import check_arguments, steer
    from .common import load_session_noting

    samp = sampling(args)  # range-checked before any model loads
    session = load_session_noting(args.session)
    check_token(session, args.token, "--token")
    check_arguments(args.token, args.edit, args.alpha, args.span, args.max_new_tokens)  # before any model loads
    engine = load_engine(session, args)
    result = steer(engine, args.token, args.edit, args.alpha, args.span, args.max_new_tokens, sampling=samp)
    print_steered(result)
    if engine.info.untrained_av:
        say("\nNote: the demo AV/AR are untrained; the steering direction carries little meaning.")
    if args.out:  # first: a session that cannot be saved (read-only, changed) must not cost this copy
        say(f"steered continuation written to {write_json(args.out, result.to_json())}")
    kept = keep_steered(session, Path(args.session), result, args.out)
    say(f"kept in the session ({len(kept.steered)} steered continuations): {args.session}")
    return 0


def keep_steered(session, path: Path, result, out: str | None):
    """Append `result` to the saved session (cli/session_update.add_to_saved: a session
    another process saved meanwhile gets it added to its newer version)."""
    from .session_update import add_to_saved

    kept = (f"the result is in {out}" if out else "rerun with --out FILE.json to keep the result in a file")
    return add_to_saved(session, path, lambda s: s.steered.append(result), "steered continuation", kept)


def print_steered(b) -> None:
    from ..core.steer_results import token_diff

    say(f"steered at token {b.index} {b.token_text!r} (layer {b.layer}), alpha {b.alpha:g}, span {b.span}, "
          f"|v| {b.vector_norm:.1f}")
    say(f"original explanation: {b.original_explanation}")
    say(f"edited explanation:   {b.edited_explanation}")
    say(f"\n{'next token':<12} {'before':<28} after")
    for k in range(max(len(b.before), len(b.after))):
        cell = lambda cs: f"{cs[k].text!r} {cs[k].prob:.3f}" if k < len(cs) else ""  # noqa: E731
        say(f"{k + 1:<12} {cell(b.before):<28} {cell(b.after)}")
    left, right = token_diff(b.original_tokens, b.steered_tokens)
    mark = lambda ps: "".join(f"[{t}]" if ch else t for t, ch in ps)  # noqa: E731
    say(f"\noriginal continuation: {mark(left)!r}")
    say(f"steered continuation:  {mark(right)!r}")
    say("(tokens that differ are in [brackets])")
