"""`python -m bench ...` and `nla-tui bench ...` (cli.py imports add_subparser from here)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("suite", choices=["gpu", "multigpu", "cpu", "ui", "serve"],
                   help="gpu: 27B-shaped nf4; multigpu: 2 cards capped at 24 GiB; cpu: demo preset; ui: Pilot; "
                        "serve: HTTP overhead over the in-process API (bench/serve.py)")
    p.add_argument("--out", help="JSON file to write (default bench/results/<suite>.json)")
    p.add_argument("--new-tokens", type=int, default=None, help="tokens per explanation (gpu 200, cpu 48)")
    p.add_argument("--explain", type=int, default=None, help="explanations in explain-all (gpu 150, cpu 32)")
    p.add_argument("--mem-budget-gib", type=float, default=44.0, help="GPU memory target for explain-all")
    p.add_argument("--dry-run", action="store_true", help="gpu/multigpu suite on CPU with a tiny config (checks the script)")
    p.add_argument("--sections", help="gpu / ui: comma list of sections to run (ui: ui, ui_many_turns, ui_agent_500, ui_branch) (default all; see bench/gpu.py SECTIONS)")
    p.add_argument("--quant", choices=["nf4", "int4"], default="nf4",
                   help="gpu: weight format of the 27B-shaped models (int4: nla_tui/core/models/int4.py)")
    p.add_argument("--preset", help="serve: models to load (default demo on CPU; e.g. gemma3-27b on a GPU box)")
    p.add_argument("--pair", help="serve: a 27B-shaped pair in DIR (written once; bench/shaped_pair.py), random weights")
    p.add_argument("--tokenizer-dir", help="serve --pair, gpu quant_auto / fidelity_check: Gemma 3 tokenizer files "
                                           "(tokenizer.json may be .xz; default for gpu: the demo pair's)")
    p.add_argument("--fidelity-cap-gib", type=float, default=48.0,
                   help="gpu fidelity_check: cap the card at this many GiB (a 48 GB card by default)")
    p.add_argument("--workdir", help="gpu startup / multigpu: where to write the 27B-shaped checkpoint (default: TMPDIR)")
    p.set_defaults(func=run)


def add_subparser(subparsers) -> None:
    _configure(subparsers.add_parser("bench", help="measure speed and memory; prints a table, writes JSON"))


def run(args: argparse.Namespace) -> int:
    from .common import Report, machine

    command = "python -m bench " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("__main__.py") \
        else " ".join(["nla-tui", *sys.argv[1:]])
    out = Path(args.out or f"bench/results/{args.suite}.json")
    if args.suite == "gpu":
        from . import gpu

        gpu.DEV.update(mode=args.quant)
        if args.dry_run:
            gpu.DEV.update(device="cpu", mode="bf16" if args.quant == "nf4" else args.quant, tiny=True)
        rep = Report(f"gpu: Gemma-3-27B-shaped {args.quant}, random weights", machine(gpu.DEV["device"]), command,
                     apply_targets=not args.dry_run)
        sections = {x.strip() for x in args.sections.split(",")} if args.sections else None
        unknown = sorted((sections or set()) - set(gpu.SECTIONS))
        if unknown:
            from nla_tui.core.errors import InputError

            raise InputError(f"Unknown --sections {', '.join(unknown)}; choose from {', '.join(gpu.SECTIONS)}.")
        gpu.run(rep, out, new_tokens=args.new_tokens or (200 if not args.dry_run else 16),
                n_explain=args.explain or (150 if not args.dry_run else 12), mem_budget_gib=args.mem_budget_gib,
                sections=sections, workdir=args.workdir, tokenizer_dir=args.tokenizer_dir,
                fidelity_cap_gib=args.fidelity_cap_gib)
    elif args.suite == "multigpu":
        from . import gpu, multigpu

        if args.dry_run:
            gpu.DEV.update(device="cpu", mode="bf16", tiny=True)
        rep = Report("multigpu: Gemma-3-27B-shaped nf4 on 2 cards capped at 24 GiB", machine(gpu.DEV["device"]),
                     command, apply_targets=not args.dry_run)
        multigpu.run(rep, out, new_tokens=args.new_tokens or (200 if not args.dry_run else 12),
                     n_explain=args.explain or (150 if not args.dry_run else 10), workdir=args.workdir)
    elif args.suite == "cpu":
        from . import cpu

        rep = Report("cpu: demo preset (Gemma 3 270M, fp32)", machine("cpu"), command, apply_targets=False)
        cpu.run(rep, out, new_tokens=args.new_tokens or 48, n_explain=args.explain or 32)
    elif args.suite == "serve":
        from . import serve

        on_cpu = args.dry_run or (args.preset in (None, "demo") and not args.pair)
        rep = Report("serve: nla-tui serve over the in-process API", machine("cpu" if on_cpu else "cuda"), command,
                     apply_targets=False)
        serve.run(rep, out, {x.strip() for x in args.sections.split(",")} if args.sections else None, args.preset,
                  args.pair, args.tokenizer_dir, args.dry_run)
    else:
        from . import ui

        rep = Report("ui: keypress-to-render, headless Pilot", machine("cpu"), command)
        ui.run(rep, out, only=set(args.sections.split(",")) if args.sections else None)
    rep.write(out)
    print(rep.table())
    print(f"wrote {out}")
    return 0 if not rep.errors else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    _configure(p)
    args = p.parse_args(argv)
    return args.func(args)
