"""A real `nla-tui serve` app on a free 127.0.0.1 port, over the session's demo engine
(tests/conftest.py: no extra model load). The engine's conversation is restored after."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from tests._support_engine import kept_engine_state

TOKEN = "test-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(engine, mcp: bool = True, corpus=None, **limits):
    """Yields (base url, the Nla behind it) while uvicorn serves build_app on a thread."""
    import uvicorn

    from nla_tui.core.api import Nla
    from nla_tui.server.app import build_app
    from nla_tui.server.mcp_tools import build_mcp

    with kept_engine_state(engine):  # the API captures other conversations on it
        nla = Nla(engine)
        app = build_app(nla, TOKEN, None, build_mcp(nla, corpus) if mcp else None, corpus=corpus, **limits)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        try:
            yield f"http://127.0.0.1:{port}", nla
        finally:
            server.should_exit = True
            thread.join(10)
            nla.close()


def small_sweep(out):
    """A sweep folder as `nla-tui sweep` leaves it (manifest, one Parquet shard, the index),
    holding three explained positions: the corpus the search tool is served over."""
    from nla_tui.core.corpus import index
    from nla_tui.core.corpus.shards import ROW_FIELDS, write_manifest, write_shard

    empty = {"string": "", "int64": 0, "float64": 0.0, "bool": False, "list<string>": []}
    texts = [("Paris", "Token \"Paris\" after \"capital of France\".", 0.8, "assistant"),
             ("Berlin", "Token \"Berlin\" after \"capital of Germany\".", 0.7, "assistant"),
             ("weather", "Token \"weather\" after \"How is the\".", 0.4, "user")]
    rows = [{**{name: empty[kind] for name, kind in ROW_FIELDS}, "conversation_id": f"c{k}", "token_index": 12 + k,
             "token_text": tok, "explanation": text, "fve_nrm": fve, "role": role, "specificity": 0.1}
            for k, (tok, text, fve, role) in enumerate(texts)]
    write_manifest(out, {"shards": 1})
    write_shard(out, 0, rows)
    index.sync(out)
    return out
