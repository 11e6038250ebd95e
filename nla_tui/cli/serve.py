"""`nla-tui serve`: load subject + AV + AR once and serve them over HTTP (+ MCP at /mcp);
`nla-tui mcp`: the MCP tools over stdio, on models loaded here or on a server (--server).

Both need the `serve` extra (`pip install 'nla-tui[serve]'`): fastapi, uvicorn, mcp, httpx.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys

from ..core.errors import InputError
from .common import add_model_args, engine_options, progress
from .output import say

DEFAULT_PORT = 8765


def add_subparser(sub) -> None:
    s = sub.add_parser("serve", help="hold the models in one process and serve them over HTTP and MCP "
                                     "(bearer token; 127.0.0.1 unless --host)")
    add_model_args(s)
    s.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: reach it through `ssh -L`); anything else "
                        "exposes the models to the network, behind the token only")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    s.add_argument("--rate-limit", type=int, default=600, help="requests a minute per client (default 600)")
    s.add_argument("--max-body-mb", type=float, default=8.0, help="largest request body in MiB (default 8)")
    s.add_argument("--no-mcp", action="store_true", help="do not serve the MCP tools at /mcp")
    add_corpus_arg(s)
    s.set_defaults(func=cmd_serve)

    m = sub.add_parser("mcp", help="the NLA as MCP tools over stdio (explain_token, explain_conversation, score, "
                                   "steer), on models loaded here or on a running server (--server URL)")
    add_model_args(m)
    m.add_argument("--server", help="use a running `nla-tui serve` at this URL instead of loading models here")
    m.add_argument("--token", help="that server's token (default: NLA_TUI_TOKEN, or this user's token file)")
    add_corpus_arg(m)
    m.set_defaults(func=cmd_mcp)


def add_corpus_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", help="a finished or running `nla-tui sweep` folder: adds the search tool (and "
                                    "/v1/search, /v1/sweep); clients never name a path themselves")


def corpus_dir(args: argparse.Namespace):
    if not args.corpus:
        return None
    from ..core.corpus import index
    from ..core.corpus.shards import require_sweep

    out = require_sweep(args.corpus)
    index.sync(out)  # shards a killed sweep wrote but did not index yet
    return out


def _need_extra() -> None:
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn", "mcp", "httpx") if importlib.util.find_spec(m) is None]
    if missing:
        raise InputError(f"`nla-tui serve` and `nla-tui mcp` need the serve extra ({', '.join(missing)} missing): "
                         f"pip install 'nla-tui[serve]' (or -e '.[serve]' in a checkout).")


def check_serve_args(args: argparse.Namespace) -> bool:
    """Checked before any model loads. Returns whether the host is a loopback address."""
    if not 0 < args.port < 65536:
        raise InputError(f"--port {args.port} must be between 1 and 65535.")
    if args.rate_limit < 1:
        raise InputError(f"--rate-limit {args.rate_limit} must be at least 1 request a minute.")
    if not args.max_body_mb > 0:
        raise InputError(f"--max-body-mb {args.max_body_mb} must be positive.")
    if args.host == "localhost":
        return True
    try:
        return ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        raise InputError(f"--host {args.host!r} is not an IP address: give 127.0.0.1 (default), or the "
                         f"address of one interface, or 0.0.0.0 for all.") from None


def cmd_serve(args: argparse.Namespace) -> int:
    loopback = check_serve_args(args)
    opts = engine_options(args)
    _need_extra()
    import uvicorn

    from ..core.api import Nla
    from ..server.app import build_app
    from ..server.guard import load_or_create_token
    from ..server.mcp_tools import build_mcp

    corpus = corpus_dir(args)
    token, token_file, created = load_or_create_token()
    nla = Nla.load(opts, progress)
    app = build_app(nla, token, token_file, None if args.no_mcp else build_mcp(nla, corpus),
                    rate_per_minute=args.rate_limit, max_body_bytes=int(args.max_body_mb * (1 << 20)), corpus=corpus,
                    host=args.host)
    tell = lambda line: say(line, file=sys.stderr, flush=True)  # noqa: E731
    tell(f"nla-tui serve: {nla.info.subject} + {nla.info.av} / {nla.info.ar}, layer {nla.info.layer}")
    tell(f"  http://{args.host}:{args.port}/v1/ (schema: /openapi.json{'' if args.no_mcp else '; MCP: /mcp'})")
    tell(f"  token {'created in' if created else 'from'} {token_file} (0600); send 'Authorization: Bearer <token>'")
    if loopback:
        tell(f"  from your laptop: ssh -N -L {args.port}:127.0.0.1:{args.port} USER@THIS_HOST, then "
            f"http://127.0.0.1:{args.port}")
    else:
        tell(f"  WARNING: bound to {args.host}, reachable from the network with only the bearer token and no TLS "
            f"between you and it; prefer the default 127.0.0.1 and an SSH tunnel.")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    nla.close()
    return 0


def cmd_mcp(args: argparse.Namespace) -> int:
    _need_extra()
    from ..server.mcp_tools import build_mcp

    corpus = corpus_dir(args)
    if args.server:
        from ..client import NlaClient

        backend = NlaClient(args.server, args.token)
        backend.info  # fails now, with the reason, if the server is not there or refuses the token
    else:
        from ..core.api import Nla

        backend = Nla.load(engine_options(args), progress)  # progress goes to stderr: stdout is the protocol
    build_mcp(backend, corpus).run("stdio")
    return 0
