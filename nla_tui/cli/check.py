"""`nla-tui check`: sidecars, configs and tokenizers only; no weights are loaded."""

from __future__ import annotations

import argparse

from ..terminal_text import visible
from .common import EXIT_USER_ERROR, add_model_args, engine_options
from .output import say


def add_subparser(sub) -> None:
    c = sub.add_parser("check", help="load tokenizers and sidecars only; report whether the pair is consistent")
    add_model_args(c)
    c.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    from ..core.nla.check import check_pair

    ok = check_pair(engine_options(args), lambda line: say(visible(line)))
    return 0 if ok else EXIT_USER_ERROR
