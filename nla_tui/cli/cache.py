"""`nla-tui cache list|clear`: what nla-tui keeps in its user cache, and removing it.

Four kinds live under the cache root (NLA_TUI_CACHE or the platform user cache dir):
quantised/ (pre-quantised nf4/int8 models, core/quant_cache.py), activations/ and
explanations/ (core/cache.py), and models/ (the converted demo models and the GGUF they
are built from, core/nla/demo_files.py; rebuilt at the next demo start). `clear` removes
only what nla-tui wrote, and says where what it leaves lives.
"""

from __future__ import annotations

import argparse
import time
from .output import say

KINDS = ("quantised", "activations", "explanations", "models")
GiB = 1 << 30


def add_subparser(subparsers) -> None:
    p = subparsers.add_parser("cache", help="list or clear nla-tui's caches (quantised models, activations, "
                                            "explanations, the converted demo models)")
    p.add_argument("action", choices=["list", "clear"])
    p.add_argument("kinds", nargs="*", metavar="KIND",
                   help=f"which caches ({', '.join(KINDS)}); default all of them")
    p.set_defaults(func=run)


def _size(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB / 10 else f"{n / (1 << 20):.1f} MiB"


def _disk_caches(root):
    from ..core.store.cache import ActivationCache, ExplanationCache

    return {"activations": ActivationCache(root), "explanations": ExplanationCache(root)}


def run(args: argparse.Namespace) -> int:
    from ..core.errors import InputError
    from ..paths import cache_root

    bad = [k for k in args.kinds if k not in KINDS]
    if bad:
        raise InputError(f"Unknown cache {bad[0]!r}: name one or more of {', '.join(KINDS)}, or none for all.")
    root = cache_root()
    if root.exists() and not root.is_dir():
        raise InputError(f"The cache root {root} is a file, not a folder (NLA_TUI_CACHE names it). Point "
                         "NLA_TUI_CACHE at a folder, or unset it to use the default.")
    try:
        return _run(args, root)
    except OSError as e:
        raise InputError(f"Cannot {args.action} the cache in {root}: {e.strerror or e}"
                         f"{f' ({e.filename})' if e.filename else ''}. NLA_TUI_CACHE must name a folder you can "
                         "read and write.") from None


def _run(args: argparse.Namespace, root) -> int:
    from ..core.models.quant_cache import QuantCache

    kinds = args.kinds or list(KINDS)
    quant = QuantCache(root)
    others = {k: c for k, c in _disk_caches(root).items() if k in kinds}
    if args.action == "list":
        say(f"cache root: {root}")
        if "quantised" in kinds:
            entries = quant.entries()
            say(f"quantised models: {len(entries)} ({_size(sum(e.size for e in entries))} of "
                  f"{_size(quant.bound)} allowed; NLA_TUI_QUANT_CACHE_MAX_BYTES) in {quant.dir}")
            for e in sorted(entries, key=lambda e: -e.last_used):
                src = e.meta.get("source", {})
                used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
                say(f"  {e.path.name}  {src.get('quant', '?'):<4} {_size(e.size):>10}  last used {used}  "
                      f"{src.get('name', '?')} @ {str(src.get('revision'))[:16]} "
                      f"(transformers {src.get('transformers', '?')}, bitsandbytes {src.get('bitsandbytes', '?')})")
        for name, c in others.items():
            say(f"{name}: {len(c)} entries, {_size(c.total_bytes())} of {_size(c.max_bytes)} allowed, in {c.dir}")
        if "models" in kinds:
            _list_demo_files()
        return 0
    if "quantised" in kinds:
        removed, freed, foreign = quant.clear()
        say(f"quantised models: removed {removed} ({_size(freed)})")
        for p in foreign:
            say(f"  left alone (not written by nla-tui): {p}")
    for name, c in others.items():
        n, size = len(c), c.total_bytes()
        c.clear()
        say(f"{name}: removed {n} entries ({_size(size)})")
    if "models" in kinds:
        from ..core.nla.demo_files import remove_demo_files

        removed, kept = remove_demo_files()
        say(f"demo models: removed {len(removed)} ({_size(sum(f.size for f in removed))}); "
              "the demo is rebuilt at its next start (about a minute)")
        for f in kept:
            say(f"  left alone: {f.path} ({_size(f.size)}): {f.what}"
                  + ("" if f.path.name.startswith(".building-") else "; not written by nla-tui, delete it yourself if unused"))
    return 0


def _list_demo_files() -> None:
    from ..core.nla.demo_files import demo_files

    files = demo_files()
    say(f"demo models: {len(files)} ({_size(sum(f.size for f in files))})")
    for f in files:
        owner = "" if f.ours else "  [not nla-tui's: `cache clear` leaves it]"
        say(f"  {f.path}  {_size(f.size):>10}  {f.what}{owner}")
