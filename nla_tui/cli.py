"""`nla-tui` entry point: the TUI by default, and headless subcommands.

    nla-tui [--preset P | --subject S --av A --ar R]        the TUI
    nla-tui run   (--prompt TEXT | --messages FILE) [...]    chat, capture, explain, score
    nla-tui check [--preset P | ...]                         sidecars + tokenizers only
    nla-tui open PATH | export SESSION | bench                (see --help of each)

User errors print one paragraph and exit 2; --debug shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from .core.errors import InputError, NlaError

EXIT_USER_ERROR = 2


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models")
    g.add_argument("--preset", help="gemma3-27b | gemma3-12b | qwen2.5-7b | llama3.3-70b | demo "
                                    "(default: gemma3-27b with a CUDA GPU, else demo)")
    g.add_argument("--subject", help="subject model: hub id or local directory (overrides the preset)")
    g.add_argument("--av", help="NLA activation verbalizer checkpoint (hub id or directory)")
    g.add_argument("--ar", help="NLA activation reconstructor checkpoint (hub id or directory)")
    g.add_argument("--layer", type=int, help="extraction layer K (default: from the sidecars)")
    g.add_argument("--quant", choices=["nf4", "int8", "bf16", "fp32"],
                   help="weights precision (default: nf4 on CUDA, fp32 on CPU)")
    g.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda if available)")
    g.add_argument("--devices", help="place models on GPUs, e.g. subject=0,av=1,ar=1 (default: by free memory)")
    g.add_argument("--cache-dir", help="activation/explanation cache (default: NLA_TUI_CACHE or the user cache dir)")
    g.add_argument("--no-cache", action="store_true", help="do not read or write the on-disk caches")
    g.add_argument("--fve-variance", type=float, help="predict-the-mean variance for fve_nrm (default: sidecar/preset)")


def engine_options(args: argparse.Namespace):
    from .core.engine import EngineOptions

    if getattr(args, "devices", None):
        from .core.placement import parse_devices

        parse_devices(args.devices)  # fail early, before any model loads
    return EngineOptions(preset=args.preset, subject=args.subject, av=args.av, ar=args.ar, layer=args.layer,
                         quant=args.quant, device=args.device, fve_variance=args.fve_variance,
                         devices=getattr(args, "devices", None), cache=False if args.no_cache else None,
                         cache_dir=args.cache_dir)


def parse_explain(spec: str, n_tokens: int) -> list[int]:
    if spec == "none":
        return []
    if spec == "all":
        return list(range(n_tokens))
    try:
        idx = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise InputError(f"--explain {spec!r} is not all, none or a comma list of token indices like 3,7,12.") from None
    bad = [i for i in idx if not 0 <= i < n_tokens]
    if bad:
        raise InputError(f"--explain index {bad[0]} is out of range: the conversation has {n_tokens} tokens.")
    return idx


def read_messages(path: str):
    from .core.types import Message

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"Messages file {path} does not exist.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"Messages file {path} is not valid JSON ({e}). It must be a list of "
                         f'{{"role": "user"|"assistant"|"system", "content": "..."}} objects.') from None
    if isinstance(data, dict) and "messages" in data:
        data = data["messages"]
    if not isinstance(data, list) or not all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                             and m.get("role") in ("user", "assistant", "system") for m in data):
        raise InputError(f"Messages file {path} must be a JSON list of "
                         f'{{"role": "user"|"assistant"|"system", "content": "..."}} objects (OpenAI style).')
    if not data:
        raise InputError(f"Messages file {path} holds no messages.")
    return [Message(m["role"], m["content"]) for m in data]


def _progress(model: str, fraction: float, message: str) -> None:
    print(f"[{model}] {fraction * 100:3.0f}% {message}", file=sys.stderr, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    from .core.engine import Engine
    from .core.types import Sampling

    if args.prompt is None and args.messages is None:
        raise InputError("Give --prompt TEXT or --messages FILE.json.")
    if args.prompt is not None and not args.prompt.strip():
        raise InputError("The prompt is empty: pass some text with --prompt.")
    messages = read_messages(args.messages) if args.messages else None
    engine = Engine(engine_options(args))
    engine.load(_progress)
    if messages is not None:
        engine.set_conversation(messages)
    else:
        print("reply: ", end="", flush=True)
        engine.chat(args.prompt, args.max_new_tokens, lambda d: print(d, end="", flush=True))
        print()
    indices = parse_explain(args.explain, len(engine.tokens))
    sampling = Sampling(temperature=args.temperature, max_new_tokens=args.max_explain_tokens, seed=args.seed)
    done = [0]

    def on_batch(exps):
        done[0] += len(exps)
        print(f"[explain] {done[0]}/{len(indices)}", file=sys.stderr, flush=True)

    exps = engine.explain(indices, sampling, args.av_prompt, batch_size=args.batch_size, on_batch=on_batch)
    print_table(engine, {e.index: e for e in exps})
    if engine.info.untrained_av:
        print("\nNote: the demo AV is untrained; its text is NOT a faithful explanation of the activation.")
    if args.out:
        from .core.session import save_session, session_from_engine

        path = save_session(session_from_engine(engine, Path(args.out).name, exps), args.out)
        print(f"session written to {path}")
    return 0


def print_table(engine, by_index) -> None:
    print(f"\n{'idx':>4} {'role':<8} {'token':<16} {'norm':>9} {'cos':>6} {'fve':>6}  explanation")
    for t in engine.tokens:
        e = by_index.get(t.index)
        tok = repr(t.text)[1:-1][:16]
        cos = f"{e.score.cos:6.3f}" if e and e.score else "     -"
        fve = f"{e.score.fve_nrm:6.2f}" if e and e.score and e.score.fve_nrm is not None else "     -"
        text = (e.text.replace("\n", " ")[:60] if e else "")
        print(f"{t.index:>4} {t.role:<8} {tok:<16} {t.norm:>9.1f} {cos} {fve}  {text}")


def cmd_check(args: argparse.Namespace) -> int:
    from .core.check import check_pair

    ok = check_pair(engine_options(args), print)
    return 0 if ok else EXIT_USER_ERROR


def cmd_tui(args: argparse.Namespace) -> int:
    from .ui.app import run_app

    return run_app(args) or 0


OPTIONAL_SUBCOMMANDS = ("nla_tui.core.export", "nla_tui.ui.open_command", "bench.cli")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nla-tui", description="Read what a language model is thinking, token by token.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    add_model_args(p)
    p.add_argument("--messages", help="open a transcript (JSON list of {role, content}) instead of chatting")
    p.add_argument("--color-system", choices=["auto", "truecolor", "256", "standard", "none"], default="auto",
                   help="force the colour depth (COLORTERM is often not forwarded over SSH)")
    p.add_argument("--no-mouse", action="store_true", help="disable mouse support")
    sub = p.add_subparsers(dest="command")

    r = sub.add_parser("run", help="headless: chat, capture, explain, score, print a table")
    add_model_args(r)
    r.add_argument("--prompt", help="user message to send")
    r.add_argument("--messages", help="JSON list of {role, content}; assistant turns are teacher-forced")
    r.add_argument("--max-new-tokens", type=int, default=64, help="reply length (default 64)")
    r.add_argument("--explain", default="all", help="all | none | comma list of token indices (default all)")
    r.add_argument("--out", help="write a session directory here")
    r.add_argument("--temperature", type=float, default=0.0, help="AV sampling temperature (0 = greedy)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--max-explain-tokens", type=int, default=200, help="AV max new tokens (default 200)")
    r.add_argument("--av-prompt", help="custom AV prompt containing <INJECT>")
    r.add_argument("--batch-size", type=int, default=None,
                   help="explanations per AV batch (default: 16 on CPU; on CUDA as many as free memory allows, up to 160)")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("check", help="load tokenizers and sidecars only; report whether the pair is consistent")
    add_model_args(c)
    c.set_defaults(func=cmd_check)

    for mod in OPTIONAL_SUBCOMMANDS:
        try:
            m = importlib.import_module(mod)
        except ImportError:
            continue
        if hasattr(m, "add_subparser"):
            m.add_subparser(sub)
    p.set_defaults(func=cmd_tui)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except NlaError as e:
        if args.debug:
            raise
        print(f"nla-tui: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
