"""`nla-tui serve` overhead: the same call in process (Nla) and over HTTP (NlaClient to a
uvicorn on 127.0.0.1), measured in one run on one loaded engine.

    python -m bench serve                      # demo pair on CPU: score overhead, first streamed token
    python -m bench serve --sections clients   # on a GPU box: 8 concurrent explaining clients vs 1

Figures (CPU suite):
- score_inprocess_ms / score_http_ms (median of N) and score_overhead_ms, their difference
  (target <= 5 ms; the baseline is the in-process call of the same run);
- first_token_inprocess_s / first_token_http_s: request to the first streamed explanation
  text (ExplainDelta) for one position.
Section `clients` (GPU): aggregate explanation tokens/s of 8 clients explaining at once,
against one client alone: whether requests of several clients share AV passes (greedy
requests waiting together do: core/api_batch.py).
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from pathlib import Path

from .common import Report

os.environ.setdefault("NLA_TUI_NO_CACHE", "1")  # measure the models, not the on-disk cache
os.environ.setdefault("HF_HUB_OFFLINE", "1")
SECTIONS = ("overhead", "clients")


def _median_ms(fn, n: int) -> float:
    fn()  # warm
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def _first_token_s(stream) -> float:
    t = time.perf_counter()
    for _ in stream:
        break
    took = time.perf_counter() - t
    stream.close()  # cancels the rest of the job
    return took


def overhead(rep: Report, nla, client, conv, n: int = 50) -> None:
    from nla_tui.core.types import Sampling

    vector = nla.activations(conv.handle, [5])[0]
    text = "Token \" is\" after \"What\"."
    # Interleaved pairs, so load from other processes hits both sides alike; the overhead is
    # the median of the per-pair differences.
    pairs = []
    for _ in range(n + 1):
        here_s, there_s = _median_ms(lambda: nla.score(text, vector), 1), _median_ms(lambda: client.score(text, vector), 1)
        pairs.append((here_s, there_s))
    pairs = pairs[1:]
    here = statistics.median(p[0] for p in pairs)
    there = statistics.median(p[1] for p in pairs)
    rep.add("score_inprocess_ms", here, "ms", note=f"Nla.score, median of {n}")
    rep.add("score_http_ms", there, "ms", baseline=here, note=f"NlaClient.score over 127.0.0.1, median of {n}")
    rep.add("score_overhead_ms", statistics.median(b - a for a, b in pairs), "ms",
            note="median of per-pair (HTTP - in-process), interleaved, same run (target <= 5 ms)")
    rep.add("status_roundtrip_ms", _median_ms(client.status, n), "ms", baseline=_median_ms(nla.status, n),
            note="GET /v1/status: the HTTP + auth + JSON cost alone, no model")
    s = Sampling(max_new_tokens=32)
    firsts_here = [_first_token_s(nla.explain_stream(conv.handle, [5], s)) for _ in range(5)]
    firsts_there = [_first_token_s(client.explain_stream(conv.handle, [5], s)) for _ in range(5)]
    rep.add("first_token_inprocess_s", statistics.median(firsts_here), "s", note="explain_stream, median of 5")
    rep.add("first_token_http_s", statistics.median(firsts_there), "s", baseline=statistics.median(firsts_here),
            note="SSE over 127.0.0.1, median of 5")


def clients(rep: Report, nla, url: str, token: str, conv, n_clients: int = 8, new_tokens: int = 200) -> None:
    from nla_tui.client import NlaClient
    from nla_tui.core.types import Sampling

    s = Sampling(max_new_tokens=new_tokens)
    positions = [p for p in range(8, len(conv.tokens))][:n_clients] or [len(conv.tokens) - 1]

    def explain(c: NlaClient, p: int, out: list) -> None:
        exps = c.explain(conv.handle, [p], s)
        out.append(len(nla._worker.engine.av.tok(exps[0].raw)["input_ids"]))

    with NlaClient(url, token) as one:
        t, toks = time.perf_counter(), []
        explain(one, positions[0], toks)
        single = sum(toks) / (time.perf_counter() - t)
    cs = [NlaClient(url, token) for _ in range(n_clients)]
    toks = []
    threads = [threading.Thread(target=explain, args=(c, positions[k % len(positions)], toks))
               for k, c in enumerate(cs)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    many = sum(toks) / (time.perf_counter() - t)
    for c in cs:
        c.close()
    rep.add("clients_1_tok_s", single, "tok/s", note=f"one client, one explanation of {new_tokens} tokens")
    rep.add(f"clients_{n_clients}_tok_s", many, "tok/s", baseline=single,
            note=f"{n_clients} clients at once, aggregate; > baseline only if requests are batched together")


def run(rep: Report, out: Path, sections: set[str] | None = None, preset: str | None = None,
        pair: str | None = None, tokenizer_dir: str | None = None, dry_run: bool = False) -> None:
    """`pair`: a 27B-shaped pair (bench/shaped_pair.py, written there once) instead of a preset;
    random nf4 weights built on the card, loaded through Engine.load as shipped."""
    from nla_tui.client import NlaClient
    from nla_tui.core.api import Nla
    from tests._support_server import TOKEN, serving

    rep.details["loadavg_at_start"] = os.getloadavg()  # a shared machine: how busy it was
    t = time.perf_counter()
    if pair:
        from . import shaped_pair

        paths = shaped_pair.ensure_pair(Path(pair), Path(tokenizer_dir), tiny=dry_run)
        sections = sections or set(SECTIONS)
        with shaped_pair.weights("nf4"):
            loaded = Nla.load(**{r: str(paths[r]) for r in ("subject", "av", "ar")},
                              **({"device": "cpu", "quant": "fp32"} if dry_run else {"device": "cuda", "quant": "nf4"}))
        rep.details["shaped_pair"] = {"dir": str(pair), "tiny": dry_run, "weights": "random, built on the card"}
    else:
        sections = sections or ({"overhead"} if preset in (None, "demo") else set(SECTIONS))
        loaded = Nla.load(preset=preset or "demo",
                          **({"device": "cpu", "quant": "fp32"} if preset in (None, "demo") else {}))
    engine = loaded._worker.engine
    loaded.close()  # the server below wraps the same engine in its own Nla
    rep.details["load_s"] = time.perf_counter() - t
    with serving(engine, mcp=False, rate_per_minute=1_000_000) as (url, nla), NlaClient(url, TOKEN) as client:
        conv = nla.capture("What is the capital of France? Answer in one word, then explain why.")
        rep.details.update(models=nla.info.to_json(), tokens=len(conv.tokens))
        if "overhead" in sections:
            overhead(rep, nla, client, conv)
        if "clients" in sections:
            clients(rep, nla, url, TOKEN, conv)
    rep.details["loadavg_at_end"] = os.getloadavg()
