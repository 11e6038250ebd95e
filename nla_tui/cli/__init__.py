"""`nla-tui` entry point: the TUI by default, and headless subcommands.

    nla-tui [--preset P | --subject S --av A --ar R]        the TUI            (tui.py)
    nla-tui --server URL                                     the TUI on a running `nla-tui serve` (tui.py)
    nla-tui run   (--prompt TEXT | --messages FILE) [...]    chat, capture, explain, score (run.py)
    nla-tui check [--preset P | ...]                         sidecars + tokenizers only (check.py)
    nla-tui open PATH | export SESSION                       saved sessions     (open.py, export.py)
    nla-tui note SESSION --token I --text T | --list          notes on tokens    (note.py)
    nla-tui branch SESSION --message M --text T              edit a message, re-run from the first changed token (branch.py)
    nla-tui steer | compare SESSION …                       steer from an edited explanation, difference of two tokens (steer.py, compare.py)
    nla-tui explain-vectors FILE                             explain any vectors (explain_vectors.py)
    nla-tui sweep DATASET --out DIR | search DIR Q | report DIR   corpora (sweep.py, search.py, report.py)
    nla-tui cache list|clear [KIND ...]                      quantised models, activations, explanations (cache.py)
    nla-tui serve | mcp                                      models loaded once, over HTTP / MCP (serve.py)
    nla-tui bench                                            from a source checkout (bench/cli.py)

One module per subcommand, each with add_subparser(sub); they are registered by
name below, so an error inside one fails loudly instead of removing the command.
Nothing else in nla_tui imports this package. User errors print one paragraph and
exit 2; --debug shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

from ..core.errors import NlaError
from . import branch, cache, check, compare, explain_vectors, export, note, open, report, run, search, serve, steer, sweep, tui
from ..terminal_text import visible
from .common import EXIT_USER_ERROR, add_display_args, add_extra_pair_arg, add_model_args
from .validate import check_out_flags, fix_negative_values
from .output import say

SUBCOMMANDS = (run, check, open, export, note, branch, steer, compare, explain_vectors, cache, sweep, search, report, serve)


def _add_bench(sub) -> None:
    """`nla-tui bench` lives in the repository's bench/ package, which a wheel does not
    ship: offered only where it is importable (a source checkout)."""
    if importlib.util.find_spec("bench") is None:
        return
    from bench.cli import add_subparser

    add_subparser(sub)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nla-tui", description="Read what a language model is thinking, token by token. "
        "Without a subcommand, nla-tui opens the terminal app (with --preset, --messages and the "
        "model flags below); the subcommands work headless.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    add_model_args(p)
    add_extra_pair_arg(p)
    p.add_argument("--messages", help="open a transcript instead of chatting (OpenAI chat format: JSON list, "
                                      '{"messages": [...]} or JSONL; system/user/assistant/tool roles, tool_calls)')
    add_display_args(p)
    tui.add_server_args(p)
    sub = p.add_subparsers(dest="command")
    for command in SUBCOMMANDS:
        command.add_subparser(sub)
    _add_bench(sub)
    p.set_defaults(func=tui.cmd_tui)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(fix_negative_values(list(sys.argv[1:] if argv is None else argv)))
    try:
        check_out_flags(args)
        return args.func(args)
    except NlaError as e:
        if args.debug:
            raise
        say(f"nla-tui: {visible(str(e))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as e:
        # A faulty disk or path the command's own checks did not foresee (read-only,
        # full, a file where a folder should be): one paragraph, not a traceback.
        if args.debug:
            raise
        where = f" ({e.filename})" if e.filename else ""
        say(f"nla-tui: {e.strerror or e}{where}. Check that the path exists, is a folder where one is "
            "expected, is writable and its disk has space (NLA_TUI_CACHE, NLA_TUI_DATA and --out name "
            "where nla-tui writes); --debug shows where it happened.", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130


__all__ = ["EXIT_USER_ERROR", "build_parser", "main"]
