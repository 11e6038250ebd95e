"""`nla-tui export SESSION --format md|json|html [--out FILE]` (loads no model)."""

from __future__ import annotations

import argparse
import sys

from ..core.store.export import FORMATS
from .output import say


def add_subparser(sub) -> None:
    p = sub.add_parser(
        "export", help="export a saved session as Markdown, JSON or a self-contained HTML heat map",
        description="Export a saved session (a directory holding session.json). Loads no model.")
    p.add_argument("session", help="session directory (or its session.json)")
    p.add_argument("--format", "-f", choices=FORMATS, default="md", help="output format (default md)")
    p.add_argument("--out", "-o", default=None, help="output file (default: standard output)")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from ..core.store.export import export_session
    from .common import load_session_noting

    session = load_session_noting(args.session)
    result = export_session(session, args.format, args.out)
    if args.out is None:
        say(result, end="")
    else:
        say(f"wrote {result}", file=sys.stderr)
    return 0
