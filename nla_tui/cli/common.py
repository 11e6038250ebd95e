"""Flags shared by several subcommands, and how they become EngineOptions."""

from __future__ import annotations

import argparse
import sys

from ..core.options import QUANT_CHOICES, QUANTS, EngineOptions, from_args
from ..terminal_text import visible
from ..ui.terminal import COLOR_SYSTEMS
from .output import say

EXIT_USER_ERROR = 2


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models")
    g.add_argument("--preset", help="gemma3-27b | gemma3-12b | qwen2.5-7b | llama3.3-70b | demo "
                                    "(default: gemma3-27b with a CUDA GPU, else demo)")
    g.add_argument("--subject", help="subject model: hub id or local directory (overrides the preset)")
    g.add_argument("--av", help="NLA activation verbalizer checkpoint (hub id or directory)")
    g.add_argument("--ar", help="NLA activation reconstructor checkpoint (hub id or directory)")
    g.add_argument("--layer", type=int, help="extraction layer K (default: from the sidecars)")
    g.add_argument("--quant", choices=list(QUANT_CHOICES),
                   help="weights precision (default: nf4 on CUDA, fp32 on CPU; int4: gemlite's faster "
                        "4-bit kernels where Triton runs; auto: the highest precision that fits the free GPU "
                        "memory, subject first, then AR, then AV)")
    g.add_argument("--subject-quant", choices=list(QUANTS),
                   help="the subject's precision alone (its activations are what the AV reads; "
                        "`nla-tui check --fidelity` says whether the running one drifts)")
    g.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda if available)")
    g.add_argument("--devices", help="place models on GPUs, e.g. subject=0,av=1,ar=1 (default: by free memory)")
    g.add_argument("--cache-dir", help="activation/explanation cache (default: NLA_TUI_CACHE or the user cache dir)")
    g.add_argument("--no-cache", action="store_true", help="do not read or write the on-disk caches")
    g.add_argument("--fve-variance", type=float, help="predict-the-mean variance for fve_nrm (default: sidecar/preset)")
    g.add_argument("--park", choices=["auto", "always", "never"],
                   help="explain-all: move the subject and AR to host memory while the AV runs "
                        "(auto: when that saves AV passes on the AV's card; default auto)")


def add_extra_pair_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--extra-pair", metavar="av=DIR,ar=DIR[,label=NAME]",
                   help="load a second AV/AR pair over the same subject (its layer from its sidecars) and "
                        "explain tokens with it too: the TUI's 2 key, `run`'s second table")


def add_display_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--color-system", choices=COLOR_SYSTEMS, default="auto",
                   help="force the colour depth (COLORTERM is often not forwarded over SSH)")
    p.add_argument("--no-mouse", action="store_true", help="disable mouse support")


def engine_options(args: argparse.Namespace) -> EngineOptions:
    """The model flags as EngineOptions; every one is checked here, before any model loads."""
    from .validate import check_model_args

    check_model_args(args)
    opts = from_args(args)
    if opts.extra_pair is not None:
        from ..core.runtime.precheck import check_extra_pair_args

        check_extra_pair_args(opts, progress)  # the pair's files against the subject's, before any model loads
    return opts


def progress(model: str, fraction: float, message: str) -> None:
    say(visible(f"[{model}] {fraction * 100:3.0f}% {message}"), file=sys.stderr, flush=True)


def load_session_noting(path):
    """load_session, with what loading noticed but did not refuse printed as warnings."""
    from ..core.store.session import load_session
    from .output import warn

    session = load_session(path)
    for w in session.warnings:
        warn(w)
    return session
