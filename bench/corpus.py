"""Corpus sweep benchmarks (issue 22): sweep throughput and where its time goes, and
search latency on a million rows.

    python -m bench.corpus sweep  [--preset demo | --subject S --av A --ar R] [--quant Q] [--device D]
                                  [--conversations 4] [--per-conversation 4] [--new-tokens 32] [--ray]
    python -m bench.corpus search [--rows 1000000] [--before-rev REV]

`sweep` runs the product's sweep (core/corpus/sweep.py, the same code as `nla-tui sweep`)
over a synthetic chat corpus and, in the same run, the baseline a script gets from the
engine without it: Engine.explain per conversation (what looping `nla-tui run --messages`
does, minus the loads). Time is split by wrapping the engine's parts: capture (subject),
AV generation, AR scoring, the controls' extra AR pass, shard write + index. On a GPU box
point it at a 27B-shaped pair (see BENCHMARKS.md, "Corpus sweep") with --conversations /
--per-conversation giving ~2,000 positions and --new-tokens 150.

On a GPU box without the released weights: `--shaped-pair DIR --tokenizer-dir TOK` writes (or
reuses) a 27B-shaped pair there (bench/shaped_pair.py: real layout, tokenizer and sidecars,
random nf4 weights built on the card) and `--mem-cap-gib 44` caps the process as a 44 GiB card
would (torch's per-process memory fraction; the engine sizes its AV batch from what is left).
`--baseline-conversations N` times the per-conversation baseline on the first N conversations
only (its rate is per position, comparable with the sweep's). `--dry-run`: the same on the CPU
with a tiny shaped pair.

`search` fills an index (core/corpus/index.py, the same schema and insert path as a sweep)
with N synthetic rows and times `index.search` as `nla-tui search` calls it (connection
opened per query) for several query shapes: median and p95 of 20 runs after one warm-up.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from .common import machine, percentile

os.environ.setdefault("NLA_TUI_NO_CACHE", "1")  # measure the models, not the on-disk cache
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TOPICS = ["the capital of France", "a red fruit", "two plus two", "the boiling point of water", "a poem about rain",
          "how tides work", "the largest planet", "a tool that lists files", "why the sky is blue",
          "the author of Hamlet", "a recipe for bread", "the speed of light"]


def synthetic_corpus(n: int) -> list[dict]:
    rng = random.Random(0)
    out = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        out.append({"id": f"conv{i:05d}", "messages": [
            {"role": "user", "content": f"Tell me about {topic}, briefly."},
            {"role": "assistant", "content": f"Here is a short answer about {topic}: it is well known, and "
                                             f"people often ask about it ({rng.randint(2, 99)} times a day)."}]})
    return out


class Timer:
    """Wraps a bound method and accumulates its wall time."""

    def __init__(self, obj, name: str):
        self.total, self.calls = 0.0, 0
        inner = getattr(obj, name)

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                self.total += time.perf_counter() - t
                self.calls += 1
        setattr(obj, name, timed)


def bench_sweep(args) -> dict:
    from nla_tui.core.corpus import controls, index, shards
    from nla_tui.core.corpus import plan as planning
    from nla_tui.core.corpus import sweep as sweep_mod
    from nla_tui.core.corpus.reader import read_corpus
    from nla_tui.core.corpus.selection import make_selection, select_positions
    from nla_tui.core.models import parking
    from nla_tui.core.options import EngineOptions
    from nla_tui.core.runtime.engine import Engine
    from nla_tui.core.types import Sampling

    work = Path(tempfile.mkdtemp(prefix="bench_corpus_"))
    src = work / "corpus.jsonl"
    src.write_text("".join(json.dumps(c) + "\n" for c in synthetic_corpus(args.conversations)))
    loading = contextlib.nullcontext()
    if args.shaped_pair:
        from . import shaped_pair

        pair = shaped_pair.ensure_pair(Path(args.shaped_pair), Path(args.tokenizer_dir), tiny=args.dry_run)
        args.subject, args.av, args.ar = (str(pair[r]) for r in ("subject", "av", "ar"))
        args.preset = None
        loading = shaped_pair.weights(args.quant or "nf4")
    cap = mem_cap(args.mem_cap_gib, args.device)
    options = EngineOptions(preset=args.preset, subject=args.subject, av=args.av, ar=args.ar, quant=args.quant,
                            device=args.device, park=args.park)
    selection = make_selection(role="assistant", max_per_conversation=args.per_conversation)
    sampling = Sampling(max_new_tokens=args.new_tokens)
    opts = sweep_mod.SweepOptions(selection, sampling, wave_positions=args.wave_positions)
    tok, limit, name = planning.subject_tokenizer(options)
    corpus = read_corpus(src)
    plan = planning.make_plan(corpus, selection, tok, limit, name,
                              shard_positions=args.shard_positions or args.per_conversation * 4)
    # As `nla-tui sweep` does: the subject's KV reservation is the longest conversation's.
    options = dataclasses.replace(options, subject_context_tokens=planning.longest_conversation(plan))
    t = time.perf_counter()
    engine = Engine(options)
    with loading:
        engine.load()
    load_s = time.perf_counter() - t
    # one warm-up position (one-time costs: kernels, graph capture on CUDA)
    sweep_mod.explain_shard(engine, plan, 0, 1, opts, None)
    timers = {"capture": Timer(engine.subject, "capture"), "av": Timer(engine.av, "generate"),
              "ar_score": Timer(engine.ar, "score"), "ar_all": Timer(engine.ar, "reconstruct"),
              "write": Timer(shards, "write_shard"), "index": Timer(index, "add_shard"),
              "park": Timer(parking.Parking, "park"), "unpark": Timer(parking.Parking, "unpark")}
    cuda = engine.info.device.startswith("cuda")
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()
    batch = engine.explain_batch_size(args.new_tokens, rows=max(plan_shard_positions(plan) or [1]))  # per AV pass
    before = None
    if args.before_positions:
        # Same run, same engine: the sweep as it was before waves (one shard per engine call,
        # never parked) over the first N positions; the timers keep counting only the sweep below.
        old_policy, engine.park_policy = engine.park_policy, "never"
        t = time.perf_counter()
        r = sweep_mod.run_sweep(engine, plan, work / "out_before", dataclasses.replace(opts, wave_positions=1),
                                limit=args.before_positions)
        before_s = time.perf_counter() - t
        before = {"what": "shard at a time, never parked (the sweep before waves)", "positions": r.rows_done,
                  "seconds": before_s, "positions_per_s": r.rows_done / before_s,
                  "explain_plan": dict(engine.last_explain_plan or {})}
        engine.park_policy = old_policy
        for tm in timers.values():
            tm.total = 0.0
    def report(p) -> None:
        # A line per update on stderr, with the parts so far: a run that dies mid-sweep (out of
        # memory, the call's time limit) still leaves its figures in the log.
        print(f"[bench] {p.rows_done}/{p.rows_total} rows, {p.elapsed:.1f} s, {p.rate:.2f} rows/s; parts "
              + json.dumps({k: round(v.total, 2) for k, v in timers.items()}), file=sys.stderr, flush=True)

    print(f"[bench] loaded in {load_s:.1f} s; sweeping {plan.n_positions} positions", file=sys.stderr, flush=True)
    t = time.perf_counter()
    result = sweep_mod.run_sweep(engine, plan, work / "out", opts, on_progress=report)
    sweep_s = time.perf_counter() - t
    explain_plan = dict(engine.last_explain_plan or {})
    peak_gib = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    parts = {k: v.total for k, v in timers.items()}
    park_calls = timers["park"].calls
    parts["controls_ar"] = parts.pop("ar_all") - parts["ar_score"]  # reconstruct outside score: the controls
    rows = shards.read_rows(work / "out", ["explanation"])
    # Baseline in the same run: Engine.explain per conversation, no cross-conversation batching, no controls.
    t = time.perf_counter()
    n_base = 0
    base_items = [] if args.no_baseline else plan.items[:args.baseline_conversations or len(plan.items)]
    for pc in base_items:
        engine.set_conversation(pc.conversation.messages)
        pos = select_positions(selection, [x.text for x in engine.tokens], [x.role for x in engine.tokens])
        engine.explain(pos, sampling, batch_size=engine.explain_batch_size(args.new_tokens, rows=len(pos)))
        n_base += len(pos)
    base_s = time.perf_counter() - t
    ray_figures = None
    if args.ray:
        # The same sweep through --ray's code on a local Ray (one engine actor), same run.
        from nla_tui.core.corpus.cluster import RaySweep

        t = time.perf_counter()
        cluster = RaySweep(options, actors=1, init_kwargs={"include_dashboard": False})
        ray_start_s = time.perf_counter() - t
        # The same one-position warm-up the in-process engine had above, so both sides pay
        # their one-time costs outside the timed sweep (counted with the actor's start-up).
        t = time.perf_counter()
        cluster.ray.get(cluster.actors[0].wave.remote(plan, [(0, 1)], opts))
        ray_warm_s = time.perf_counter() - t
        t = time.perf_counter()
        ray_result = cluster.run(plan, work / "out_ray", opts)
        ray_s = time.perf_counter() - t
        cluster.shutdown()
        ray_figures = {"actor_start_s": ray_start_s, "actor_warmup_s": ray_warm_s, "sweep_s": ray_s, "positions_per_s": ray_result.rows_done / ray_s,
                       "overhead_vs_in_process": ray_s / sweep_s - 1}
    d = engine.info.device
    return {"suite": "corpus sweep", "machine": machine("cuda" if d.startswith("cuda") else "cpu"),
            "load_average_1m": os.getloadavg()[0],
            "command": "python -m bench.corpus " + " ".join(sys.argv[1:]), "models": engine.info.to_json(),
            "precision": engine.info.quant, "load_s": load_s, "positions": result.rows_done,
            "new_tokens": args.new_tokens, "sweep_s": sweep_s, "positions_per_s": result.rows_done / sweep_s,
            "mean_explanation_chars": statistics.mean(len(r["explanation"]) for r in rows) if rows else 0,
            "parts_s": parts, "parts_share": {k: v / sweep_s for k, v in parts.items()},
            "shaped_pair": bool(args.shaped_pair), "mem_cap_gib": cap, "peak_gib": peak_gib,
            "av_batch_rows_unparked": batch, "shard_positions": plan_shard_positions(plan),
            "wave_positions": sweep_mod.wave_size(engine.info.device, opts), "last_wave_explain_plan": explain_plan,
            "before_waves": before, "park_calls": park_calls,
            "baseline": {"what": "Engine.explain per conversation (a script looping `nla-tui run`), same positions"
                                 + (f"; the first {len(base_items)} conversations" if len(base_items) < len(plan.items) else ""),
                         "conversations": len(base_items), "positions": n_base, "seconds": base_s,
                         "positions_per_s": n_base / base_s if n_base else None},
            "controls": {"others": opts.others, "prior_text": controls.PRIOR_TEXT}, "ray": ray_figures}


def mem_cap(gib: float | None, device: str | None) -> float | None:
    """Cap this process on card 0 as a `gib` card would be (None: the whole card)."""
    if not gib or not (device or "").startswith("cuda"):
        return None
    import torch

    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, gib * 2**30 / total), 0)
    return gib


def plan_shard_positions(plan) -> list[int]:
    return sorted({sum(plan.items[c].n_positions for c in shard) for shard in plan.shards})


def _index_at(rev: str):
    """core/corpus/index.py as it was at git revision `rev`: the same-run baseline of a change
    to search (both versions query the same index file)."""
    import importlib.util
    import subprocess

    source = subprocess.run(["git", "show", f"{rev}:nla_tui/core/corpus/index.py"], capture_output=True, text=True,
                            check=True).stdout
    path = Path(tempfile.mkdtemp(prefix="bench_index_")) / "index_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("nla_tui.core.corpus._index_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def bench_search(args) -> dict:
    from nla_tui.core.corpus import index

    rng = random.Random(0)
    common = ("token after the capital city of france paris next source chat user assistant model text answer "
              "question number tool result file list name word sentence poem rain light water planet bread").split()
    rare = ["deceive", "deception", "deceit", "lying", "sabotage", "secret", "hidden", "manipulate"]
    roles = ["model", "user", "tool_call", "tool_result", "system"]
    work = Path(args.index_dir) if args.index_dir else Path(tempfile.mkdtemp(prefix="bench_search_"))
    work.mkdir(parents=True, exist_ok=True)
    reuse = (work / "index.sqlite").exists()  # --index-dir of an earlier run with the same --rows: no rebuild
    t = time.perf_counter()
    db = index.connect(work)
    chunk = 100_000
    for shard in range(0, 0 if reuse else args.rows, chunk):
        rows = []
        for i in range(shard, min(args.rows, shard + chunk)):
            words = rng.choices(common, k=16) + ([rng.choice(rare)] if rng.random() < 0.002 else [])
            rng.shuffle(words)
            rows.append({"conversation_id": f"c{i // 200}", "conversation": i // 200, "message_index": 1,
                         "token_index": i % 200, "role": rng.choice(roles), "token_text": rng.choice(common),
                         "context_before": "the capital of", "context_after": " is", "explanation": " ".join(words),
                         "fve_nrm": rng.uniform(-0.5, 1.0), "cos": 0.9, "specificity": rng.uniform(-0.5, 1),
                         "surprise": rng.uniform(0, 10), "prior_fve": 0.1, "activation_norm": 100.0})
        index.add_shard(db, shard // chunk, rows, 0)
    db.close()
    build_s = time.perf_counter() - t
    size = (work / "index.sqlite").stat().st_size
    queries = {"rare prefix decei*": ("decei*", None, None, "rank"),
               "rare word, assistant, fve>=0.5": ("sabotage", ("model", "tool_call"), 0.5, "rank"),
               "common word (rank)": ("capital", None, None, "rank"),
               "common phrase": ('"capital city"', None, None, "rank"),
               "rare phrase of common words": ('"capital city of france"', None, None, "rank"),
               "phrase of 3 common words (~500 rows)": ('"capital city of"', None, None, "rank"),
               "common phrase, sort by fve": ('"capital city"', None, None, "fve"),
               "phrase of 3 common words, sort by fve": ('"capital city of"', None, None, "fve"),
               "rare phrase of common words, sort by fve": ('"capital city of france"', None, None, "fve"),
               "common word, sort by fve": ("paris", None, None, "fve"),
               "two words AND": ("poem AND rain", ("model",), 0.5, "rank")}
    before = _index_at(args.before_rev) if args.before_rev else None
    out = {}
    for label, (q, r, f, s) in queries.items():
        hits = index.search(work, q, r, f, s, 20)  # warm-up
        times, times_before = [], []
        for _ in range(20):
            t = time.perf_counter()
            index.search(work, q, r, f, s, 20)
            times.append((time.perf_counter() - t) * 1000)
            if before is not None:  # interleaved, so load from other processes hits both alike
                t = time.perf_counter()
                before.search(work, q, r, f, s, 20)
                times_before.append((time.perf_counter() - t) * 1000)
        out[label] = {"query": q, "sort": s, "hits": len(hits), "note": hits.note, "median_ms": statistics.median(times),
                      "p95_ms": percentile(times, 95)}
        if before is not None:
            out[label].update(before_median_ms=statistics.median(times_before), before_p95_ms=percentile(times_before, 95))
    return {"suite": "corpus search", "machine": machine("cpu"), "load_average_1m": os.getloadavg()[0], "command": "python -m bench.corpus " +
            " ".join(sys.argv[1:]), "rows": args.rows, "index_reused": reuse, "build_s": build_s, "index_bytes": size, "queries": out}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.corpus")
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("sweep")
    for flag in ("--preset", "--subject", "--av", "--ar", "--quant", "--device"):
        s.add_argument(flag)
    s.add_argument("--conversations", type=int, default=4)
    s.add_argument("--per-conversation", type=int, default=4)
    s.add_argument("--new-tokens", type=int, default=32)
    s.add_argument("--no-baseline", action="store_true", help="skip the per-conversation Engine.explain baseline")
    s.add_argument("--ray", action="store_true", help="also run it on a local Ray (one actor) and report the overhead")
    s.add_argument("--shard-positions", type=int, default=None, help="positions per shard (default 4 conversations' worth)")
    s.add_argument("--baseline-conversations", type=int, default=None, help="time the baseline on the first N only")
    s.add_argument("--shaped-pair", help="write/reuse a 27B-shaped pair in DIR (random weights; bench/shaped_pair.py)")
    s.add_argument("--tokenizer-dir", help="Gemma 3 tokenizer files for --shaped-pair (tokenizer.json may be .xz)")
    s.add_argument("--mem-cap-gib", type=float, default=None, help="cap this process on the card (e.g. 44)")
    s.add_argument("--dry-run", action="store_true", help="with --shaped-pair: a tiny pair on the CPU")
    s.add_argument("--wave-positions", type=int, default=None, help="as nla-tui sweep's (default: 2048 on CUDA)")
    s.add_argument("--park", choices=["auto", "always", "never"], default=None, help="as nla-tui sweep's")
    s.add_argument("--before-positions", type=int, default=None,
                   help="also time the sweep before waves (shard at a time, unparked) on the first N positions")
    s.add_argument("--out", default="bench/results/corpus_sweep.json")
    q = sub.add_parser("search")
    q.add_argument("--rows", type=int, default=1_000_000)
    q.add_argument("--before-rev", help="also time index.py as of this git revision, interleaved (same index)")
    q.add_argument("--index-dir", help="build the index here (kept), or reuse the one an earlier run left there")
    q.add_argument("--out", default="bench/results/corpus_search.json")
    args = p.parse_args(argv)
    if args.what == "sweep" and not any((args.preset, args.subject)):
        args.preset = "demo"
    doc = bench_sweep(args) if args.what == "sweep" else bench_search(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
