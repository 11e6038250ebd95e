"""`nla-tui search DIR "query" [--role R] [--min-fve X] [--sort S] [--limit N]`: search a
sweep's explanations and token texts (SQLite FTS5; core/corpus/index.py)."""

from __future__ import annotations

import argparse
import time

from ..terminal_text import visible
from .output import say


def add_subparser(sub) -> None:
    s = sub.add_parser("search", help="search a sweep's explanations (FTS5: words, \"phrases\", prefix*, AND/OR/NOT)")
    s.add_argument("dir", help="a sweep's output folder")
    s.add_argument("query", help='e.g. decei* or "capital of" (FTS5 syntax)')
    s.add_argument("--role", help="token roles, comma separated (assistant, user, tool, model, tool_call, ...)")
    s.add_argument("--min-fve", type=float, help="only explanations at least this faithful (fve_nrm)")
    s.add_argument("--sort", default="rank", help="rank (bm25, the default), corpus (input order), fve, -fve, "
                                                  "specificity, surprise, norm")
    s.add_argument("--limit", type=int, default=20, help="hits to show (default 20)")
    s.set_defaults(func=cmd_search)


def _num(v: float | None, fmt: str = "6.2f") -> str:
    return format(v, fmt) if v is not None else "     -"


def cmd_search(args: argparse.Namespace) -> int:
    from ..core.corpus import index
    from ..core.corpus.selection import parse_roles
    from ..core.corpus.shards import require_sweep
    from ..core.errors import InputError

    out = require_sweep(args.dir)
    roles = parse_roles(args.role) if args.role else None
    if args.limit < 1:
        raise InputError(f"--limit is {args.limit}; it must be at least 1.")
    index.sync(out)  # shards a killed sweep wrote but did not index yet
    t0 = time.perf_counter()
    hits = index.search(out, args.query, roles, args.min_fve, args.sort, args.limit)
    ms = (time.perf_counter() - t0) * 1000
    say(f"{'conversation':<18} {'tok':>5} {'role':<11} {'fve':>6} {'verdict':<10} {'spec':>6}  context → explanation")
    for h in hits:
        context = f"{h.context_before}[{h.token_text}]{h.context_after}"
        say(visible(f"{h.conversation_id[:18]:<18} {h.token_index:>5} {h.role:<11} {_num(h.fve_nrm)} "
                    f"{h.shown_verdict:<10} {_num(h.specificity)}  {context[-40:]!r} → {h.explanation[:90]}",
                    keep_layout=False))
    say(f"{len(hits)} hit(s) in {ms:.1f} ms" + (f" (first {args.limit}; --limit for more)"
                                                  if len(hits) == args.limit else "") + (f"; {hits.note}" if hits.note else ""))
    return 0
