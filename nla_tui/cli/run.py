"""`nla-tui run`: headless chat, capture, explain, score; prints a table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core.types import EXPLAIN_TOKENS
from ..terminal_text import visible
from .common import add_extra_pair_arg, add_model_args, engine_options, progress
from .validate import check_explain_range, check_run_args
from .output import say


def add_subparser(sub) -> None:
    r = sub.add_parser("run", help="headless: chat, capture, explain, score, print a table")
    add_model_args(r)
    add_extra_pair_arg(r)
    r.add_argument("--prompt", help="user message to send")
    r.add_argument("--messages", help='transcript in the OpenAI chat format (JSON list, {"messages": [...]} or '
                                      "JSONL; tool calls and results included); assistant turns are teacher-forced")
    r.add_argument("--example", action="store_true",
                   help="the short example conversation the TUI opens on with the demo preset (its replies "
                        "are teacher-forced: the demo's 270M subject is a base model, not a chat model)")
    r.add_argument("--max-new-tokens", type=int, default=64, help="reply length (default 64)")
    r.add_argument("--explain", default="all",
                   help="all | none | token indices and ranges, e.g. 3,7,12 or 17-37 (default all)")
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

        check_transcript_fits(options, messages, progress)  # tokenizer only: before any weights load
    engine = Engine(options)
    engine.load(progress)
    say(visible(precision_line(engine.info)), file=sys.stderr)
    if messages is not None:
        engine.set_conversation(messages, lambda done, total: say(
            f"[capture] {done}/{total} tokens", file=sys.stderr, flush=True))
        print_conversation(engine)
    else:
        say("reply: ", end="", flush=True)
        engine.chat(args.prompt, args.max_new_tokens, lambda d: say(visible(d), end="", flush=True))
        say()
    indices = check_explain_range(spec, len(engine.tokens))  # before any AV work
    sampling = Sampling(temperature=args.temperature, max_new_tokens=args.max_explain_tokens, seed=args.seed)
    exps = explain_with_progress(engine, indices, sampling, args.av_prompt, args.batch_size)
    print_table(engine, {e.index: e for e in exps}, only_explained=isinstance(spec, list))
    if engine.pair is not None and indices:
        pair_exps = explain_with_pair(engine, indices, sampling, args.av_prompt)
        say(f"\nextra pair {visible(engine.pair.info.label)!r} (layer {engine.pair.info.layer}):")
        print_table(engine, {e.index: e for e in pair_exps}, only_explained=isinstance(spec, list))
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


def precision_line(info) -> str:
    """Which precision ran per model and the fidelity self-check's verdict (or how to get one)."""
    from ..core.fidelity_report import reference_precision

    line = f"precision: {info.quant}; self-check: {info.fidelity or 'not run (nla-tui check --fidelity)'}"
    if info.fidelity_drifts:
        ref = reference_precision(info.device)
        line += f" — try --quant auto or --subject-quant {ref}"
    return line


def explain_with_progress(engine, indices: list[int], sampling, prompt: str | None, batch_size: int | None):
    """engine.explain with one progress bar on stderr: rate and time left from the first
    finished row, moved per finished row (core.runtime.progress, as the TUI counts)."""
    from tqdm import tqdm

    from ..core.runtime.progress import RowProgress

    if not indices:
        return []
    # miniters=1: every finished row is drawn (tqdm's adaptive default would skip some).
    with tqdm(total=len(indices), desc="explain", unit="row", file=sys.stderr, dynamic_ncols=True,
              mininterval=0.5, miniters=1) as bar:
        progress = RowProgress(len(indices), report=lambda p: bar.update(p.done - bar.n))
        with engine.counting_rows(progress.row_done):
            return engine.explain(indices, sampling, prompt, batch_size=batch_size,
                                  on_batch=lambda exps: progress.batch_done(len(exps)))


def explain_with_pair(engine, indices: list[int], sampling, prompt: str | None):
    """The same tokens with the extra pair, in AV batches sized as the main pair's (kept in the
    engine, so the session saves them)."""
    size = engine.explain_batch_size(sampling.max_new_tokens, rows=len(indices))
    out = []
    for b in range(0, len(indices), size):
        say(f"[extra pair] explaining {min(b + size, len(indices))}/{len(indices)}", file=sys.stderr, flush=True)
        out += engine.explain_with_pair(indices[b:b + size], sampling, prompt)
    return out


def print_conversation(engine) -> None:
    """The transcript's messages, one line each (a --prompt run prints its reply instead)."""
    from ..core.store.transcript import message_display_text

    say(f"conversation: {len(engine.messages)} messages, {len(engine.tokens)} tokens "
        "(assistant turns teacher-forced)")
    for m in engine.messages:
        text = message_display_text(m).replace("\n", " ")
        say(f"  {m.role}: {text[:100]}{'…' if len(text) > 100 else ''}", keep_layout=False)


def print_table(engine, by_index, only_explained: bool = False) -> None:
    """One row per token (with --explain I,J,K only those), its verdict never "good"
    where core.caveats flags the position, then the same warnings the TUI's pane shows,
    grouped by kind."""
    from ..core.caveats import grouped, median_norm, position_caveats, verdict

    median = median_norm(engine.tokens)
    caveats = {t.index: position_caveats(engine.tokens, t.index, median) for t in engine.tokens}
    say(f"\n{'idx':>4} {'role':<8} {'token':<16} {'norm':>9} {'cos':>6} {'fve':>6} {'verdict':<10}   explanation")
    for t in engine.tokens:
        e = by_index.get(t.index)
        if e is None and only_explained:
            continue
        tok = visible(repr(t.text)[1:-1][:16])
        cos = f"{e.score.cos:6.3f}" if e and e.score else "     -"
        fve = f"{e.score.fve_nrm:6.2f}" if e and e.score and e.score.fve_nrm is not None else "     -"
        judged = verdict(e.score, caveats[t.index]) if e else ""
        flag = "⚠" if e and (caveats[t.index] or e.warnings) else " "
        text = visible(e.text.replace("\n", " ")[:60], keep_layout=False) if e else ""
        say(f"{t.index:>4} {t.role:<8} {tok:<16} {t.norm:>9.1f} {cos} {fve} {judged:<10} {flag} {text}")
    if only_explained and len(by_index) < len(engine.tokens):
        say(f"({len(engine.tokens) - len(by_index)} tokens not explained are left out; "
            "--explain none lists every token)")
    explained = {i: c for i, c in caveats.items() if c and i in by_index}
    lines = grouped(explained, {i: e.warnings for i, e in by_index.items() if e.warnings})
    if lines:
        say("\nWarnings (⚠ rows; the TUI shows the same beside each explanation):")
        for line in lines:
            say(f"  ⚠ {line}")
