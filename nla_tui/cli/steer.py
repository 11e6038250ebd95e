"""`nla-tui steer SESSION --token I (--edit TEXT | --vector FILE [--name T] | --diff A,B | --sae DIR --feature N
[--any-layer]) [--alpha A] [--span here|onward] [--max-new-tokens N] [--out FILE.json]`:
what if the model had thought otherwise at token I? Checks everything it can before any
model loads (the vector file or SAE row is read and validated against the session's
d_model and layer); the steered continuation is kept in the session's `steered` list."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.steer_jobs import DEFAULT_ALPHA
from ..core.types import CONTINUATION_TOKENS
from .common import add_model_args
from .session_engine import add_sampling_args, check_token, load_engine, sampling, write_json
from .output import say


def add_subparser(sub) -> None:
    s = sub.add_parser("steer", help="steer the subject at a token with a vector (edited explanation, file, a-b, SAE)",
                       description="Regenerate a saved session's conversation from token I with a steering "
                                   "vector added at layer K: AR(edited) - AR(original) (--edit; alpha x the "
                                   "token's activation norm), or a vector from a .safetensors/.npy file "
                                   "(--vector), activation[A] - activation[B] (--diff A,B) or decoder row N of a "
                                   "local sae-lens SAE (--sae DIR --feature N), each as a direction times alpha "
                                   "x the layer's median activation norm. Prints the vector's norm and layer, "
                                   "next-token top-5 before/after and both continuations; the result is kept "
                                   "in the session.")
    add_model_args(s)
    s.add_argument("session", help="session directory (or its session.json)")
    s.add_argument("--token", type=int, required=True, help="token index to steer at")
    source = s.add_mutually_exclusive_group(required=True)
    source.add_argument("--edit", help="the edited explanation (steers by AR(edited) - AR(original))")
    source.add_argument("--vector", metavar="FILE", help="a .safetensors or .npy file holding one vector [d_model]")
    source.add_argument("--diff", metavar="A,B", help="activation[A] - activation[B] of two tokens of the session")
    source.add_argument("--sae", metavar="DIR", help="a local sae-lens SAE directory (cfg.json + "
                                                     "sae_weights.safetensors); pick its row with --feature")
    s.add_argument("--name", help="with --vector: the tensor of a .safetensors file holding several")
    s.add_argument("--feature", type=int, help="with --sae: the feature whose decoder row W_dec[N] steers")
    s.add_argument("--any-layer", action="store_true",
                   help="with --sae: steer even when the SAE reads another layer than the NLA's K")
    s.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                   help=f"strength (default {DEFAULT_ALPHA:g}): x the token's activation norm for --edit, x the "
                        f"layer's median activation norm over the session's tokens otherwise")
    s.add_argument("--span", default="here", choices=["here", "onward"],
                   help="here: that token only; onward: it and every later position (default here)")
    s.add_argument("--max-new-tokens", type=int, default=CONTINUATION_TOKENS,
                   help=f"continuation length (default {CONTINUATION_TOKENS})")
    s.add_argument("--out", help="also write the result as JSON here")
    add_sampling_args(s)
    s.set_defaults(func=cmd_steer)


def source_from_args(args: argparse.Namespace):
    """The steering source the flags name (a one-line InputError for a flag without its pair)."""
    from ..core.errors import InputError
    from ..core.steer_sources import FileVector, SaeFeature, TextReading, TokenDifference

    if args.name is not None and args.vector is None:
        raise InputError("--name picks a tensor of a --vector file; give --vector FILE too.")
    if (args.feature is not None or args.any_layer) and args.sae is None:
        raise InputError("--feature and --any-layer go with --sae DIR (a local sae-lens SAE).")
    if args.vector is not None:
        return FileVector(args.vector, args.name)
    if args.sae is not None:
        if args.feature is None:
            raise InputError("--sae needs --feature N: the feature whose decoder row steers.")
        return SaeFeature(args.sae, args.feature, any_layer=args.any_layer)
    if args.diff is not None:
        parts = args.diff.split(",")
        try:
            a, b = (int(p) for p in parts)
        except ValueError:
            raise InputError(f"--diff {args.diff!r} is not two token indices A,B (e.g. --diff 12,30).") from None
        return TokenDifference(a, b)
    return TextReading(args.token, args.edit)


def cmd_steer(args: argparse.Namespace) -> int:
    from ..core.runtime.steer import check_arguments, steer
    from ..core.store.vector_files import check_source
    from .common import load_session_noting

    samp = sampling(args)  # range-checked before any model loads
    source = source_from_args(args)
    session = load_session_noting(args.session)
    check_token(session, args.token, "--token")
    check_arguments(args.token, source, args.alpha, args.span, args.max_new_tokens)  # before any model loads
    # the file / SAE row read and validated against the session's model, a − b's tokens in range
    check_source(source, session.info.d_model, session.info.layer, len(session.tokens))
    engine = load_engine(session, args)
    result = steer(engine, args.token, alpha=args.alpha, span=args.span, max_new_tokens=args.max_new_tokens,
                   sampling=samp, source=source)
    print_steered(result)
    if engine.info.untrained_av and result.source_kind == "text":
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
    say(f"vector: {b.source_text}" + (f", |raw| {b.source['norm']:.3g}" if b.source else "")
        + f"; alpha is x {b.unit}" + (f" ({b.source['unit_norm']:.1f})" if b.source else ""))
    for warning in (b.source or {}).get("warnings", []):
        say(f"warning: {warning}")
    if b.source_kind == "text":
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
