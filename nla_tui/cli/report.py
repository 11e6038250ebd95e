"""`nla-tui report DIR [--out FILE]`: a sweep as one self-contained HTML page
(core/corpus/report.py; default DIR/report.html)."""

from __future__ import annotations

import argparse
from .output import say


def add_subparser(sub) -> None:
    r = sub.add_parser("report", help="write a sweep's HTML report (histograms, best/worst, phrases, conversations)")
    r.add_argument("dir", help="a sweep's output folder")
    r.add_argument("--out", help="where to write the page (default DIR/report.html)")
    r.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..core.corpus.report import write_report
    from ..core.corpus.shards import require_sweep

    out = require_sweep(args.dir)
    say(f"report written to {write_report(out, Path(args.out).expanduser() if args.out else None)}")
    return 0
