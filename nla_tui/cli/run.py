"""`nla-tui run`: headless chat, capture, explain, score; prints a table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core.types import EXPLAIN_TOKENS
from ..terminal_text import visible
from .common import add_model_args, engine_options, progress
from .validate import check_explain_range, check_run_args
from .output import say


def add_subparser(sub) -> None:
    r = sub.add_parser("run", help="headless: chat, capture, explain, score, print a table")
    add_model_args(r)
    r.add_argument("--prompt", help="user message to send")
    r.add_argument("--messages", help='transcript in the OpenAI chat format (JSON list, {"messages": [...]} or '
                                      "JSONL; tool calls and results included); assistant turns are teacher-forced")
    r.add_argument("--max-new-tokens", type=int, default=64, help="reply length (default 64)")
    r.add_argument("--explain", default="all", help="all | none | comma list of token indices (default all)")
    r.add_argument("--out", help="write a session directory here (a new or empty folder)")
    r.add_argument("--force", action="store_true",
                   help="let --out replace the session in that folder, or write into a non-empty "
                        "folder (files nla-tui did not write are never deleted)")
    r.add_argument("--temperature", type=float, default=0.0, help="AV sampling temperature (0 = greedy)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--max-explain-tokens", type=int, default=EXPLAIN_TOKENS,
                   help=f"AV max new tokens (default {EXPLAIN_TOKENS})")
    r.add_argument("--av-prompt", help="custom AV prompt containing <INJECT>")
    r.add_argument("--batch-size", type=int, default=None,
                   help="explanations per AV batch (default: 16 on CPU; on CUDA as many as free memory allows, up to 160)")
    r.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from ..core.runtime.engine import Engine
    from ..core.store.transcript import control_marker_warning, load_transcript
    from ..core.types import Message, Sampling
    from .output import warn

    spec = check_run_args(args)  # every argument, before any model loads
    messages = load_transcript(args.messages) if args.messages else None
    marker = control_marker_warning(messages or [Message("user", args.prompt)])
    if marker:
        warn(marker)
    options = engine_options(args)
    if messages is not None:
        from ..core.runtime.precheck import check_transcript_fits

        check_transcript_fits(options, messages)  # tokenizer only: before any weights load
    engine = Engine(options)
    engine.load(progress)
    if messages is not None:
        engine.set_conversation(messages, lambda done, total: say(
            f"[capture] {done}/{total} tokens", file=sys.stderr, flush=True))
    else:
        say("reply: ", end="", flush=True)
        engine.chat(args.prompt, args.max_new_tokens, lambda d: say(visible(d), end="", flush=True))
        say()
    indices = check_explain_range(spec, len(engine.tokens))  # before any AV work
    sampling = Sampling(temperature=args.temperature, max_new_tokens=args.max_explain_tokens, seed=args.seed)
    done = [0]

    def on_batch(exps):
        done[0] += len(exps)
        say(f"[explain] {done[0]}/{len(indices)}", file=sys.stderr, flush=True)

    exps = engine.explain(indices, sampling, args.av_prompt, batch_size=args.batch_size, on_batch=on_batch)
    print_table(engine, {e.index: e for e in exps})
    if engine.info.untrained_av:
        say("\nNote: the demo AV is untrained; its text is NOT a faithful explanation of the activation.")
    elif engine.info.pair_note:
        say(f"\nNote: {engine.info.pair_note}.")
    if args.out:
        from ..core.store.session import save_session, session_from_engine

        session = session_from_engine(engine, Path(args.out).expanduser().name, exps)
        session.generation = args.out_generation  # checked again under the folder's lock
        path = save_session(session, args.out, expect_new=args.out_generation is None)
        say(f"session written to {path}")
    return 0


def print_table(engine, by_index) -> None:
    say(f"\n{'idx':>4} {'role':<8} {'token':<16} {'norm':>9} {'cos':>6} {'fve':>6}  explanation")
    for t in engine.tokens:
        e = by_index.get(t.index)
        tok = visible(repr(t.text)[1:-1][:16])
        cos = f"{e.score.cos:6.3f}" if e and e.score else "     -"
        fve = f"{e.score.fve_nrm:6.2f}" if e and e.score and e.score.fve_nrm is not None else "     -"
        # ⚠: the explanation carries a warning (a fallback, cut off, ...); listed under the table
        flag = "⚠ " if e and e.warnings else ""
        text = flag + visible(e.text.replace("\n", " ")[:60], keep_layout=False) if e else ""
        say(f"{t.index:>4} {t.role:<8} {tok:<16} {t.norm:>9.1f} {cos} {fve}  {text}")
    warned = [(i, w) for i, e in sorted(by_index.items()) for w in e.warnings]
    if warned:
        say("\nwarnings (read these explanations as low-information):")
        for i, w in warned:
            say(f"{i:>4}  ⚠ {visible(w, keep_layout=False)}")
