"""`nla-tui sweep DATASET --out DIR`: explain many conversations into Parquet shards,
a manifest and a search index (core/corpus; docs/CORPUS.md).

Everything is checked before any weights load: the flags, the whole input (every
file and line), the output folder against a sweep already there, every conversation's
length against the subject's context. `--dry-run` stops after printing the counts
and, unless --no-warmup, an estimate of the time from a short measured warm-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

from ..core.errors import InputError
from ..terminal_text import visible
from .common import add_extra_pair_arg, add_model_args, engine_options, progress
from .progress_line import ProgressLine, duration
from .session_engine import add_sampling_args, sampling
from .validate import INJECT, _positive
from .output import say

WARMUP_POSITIONS = 4  # CPU: rows cost about the same alone or batched
# CUDA: the AV is fast only in full batches, and a sweep runs full batches (waves), so the
# estimate times one full batch (the largest decode bucket); 4 positions would make a GPU
# sweep look ~20x slower than it runs.
WARMUP_POSITIONS_CUDA = 160


def add_subparser(sub) -> None:
    s = sub.add_parser("sweep", help="explain a corpus of conversations into Parquet + a search index",
                       description="Explain the positions of many conversations (OpenAI chat JSON/JSONL, a "
                                   "Parquet/JSONL messages column, or a datasets save_to_disk folder) into "
                                   "Parquet shards with per-position controls. Resumable: run the same "
                                   "command again after a crash. docs/CORPUS.md.")
    add_model_args(s)
    add_extra_pair_arg(s)
    s.add_argument("--pair", choices=["main", "extra"], default="main",
                   help="which pair explains the sweep: main (--preset / --av / --ar, default) or extra "
                        "(--extra-pair's AV and AR over the same subject); a sweep runs one pair, its rows "
                        "name it (av, ar, layer)")
    s.add_argument("dataset", help="a conversation file or a folder of them")
    s.add_argument("--out", required=True, help="output folder (new, or a sweep of the same job to resume)")
    g = s.add_argument_group("selection (combinable; applied in this order)")
    g.add_argument("--role", help="token roles to explain, comma separated: assistant, user, system, tool, "
                                  "model, tool_call, tool_result, special, bos, all (default: content roles)")
    g.add_argument("--regex", help="keep positions whose token text (or neighbourhood) matches this Python regex")
    g.add_argument("--regex-context", type=int, default=0,
                   help="tokens either side included in the text --regex searches (default 0: the token only)")
    g.add_argument("--every", type=int, default=1, help="every k-th of the positions left (default 1)")
    g.add_argument("--most-surprising", type=int, help="the N most surprising per conversation")
    g.add_argument("--max-per-conversation", type=int, help="at most M per conversation, evenly spaced")
    c = s.add_argument_group("controls and output")
    c.add_argument("--others", type=int, default=8,
                   help="specificity control: score each explanation against K other positions of the same "
                        "conversation and role (default 8; 0 = off)")
    c.add_argument("--prior-text", default=None,
                   help="prior control: the content-free explanation the AR reconstructs (default: "
                        "'A token in a piece of text.')")
    c.add_argument("--no-prior", action="store_true", help="turn the prior control off")
    c.add_argument("--save-activations", action="store_true", help="also write each shard's activations (safetensors)")
    c.add_argument("--shard-positions", type=int, default=256,
                   help="positions per shard, at least (whole conversations; default 256)")
    c.add_argument("--wave-positions", type=int, default=None,
                   help="positions explained per engine call, across shards (default: 2048 on a GPU, where the "
                        "subject and AR are parked in host memory once per wave if the AV's batch needs the "
                        "room; one shard on CPU). A kill loses at most one wave")
    c.add_argument("--limit", type=int, help="explain only the first N positions of the sweep (a quick look)")
    c.add_argument("--dry-run", action="store_true", help="check the input, print the counts and an estimate, stop")
    c.add_argument("--no-warmup", action="store_true", help="--dry-run without loading models (no time estimate)")
    r = s.add_argument_group("scale-out (optional extra [cluster]: pip install 'nla-tui[cluster]')")
    r.add_argument("--ray", action="store_true", help="run on a Ray cluster: one engine actor per GPU (docs/CORPUS.md)")
    r.add_argument("--ray-address", help="the cluster to join (default: RAY_ADDRESS, else a local Ray)")
    r.add_argument("--ray-actors", type=int, help="engine actors (default: one per GPU of the cluster; 1 without GPUs)")
    c.add_argument("--force", action="store_true",
                   help="discard a different sweep in --out (only its own files), or write into a non-empty folder")
    s.add_argument("--av-prompt", help="custom AV prompt containing <INJECT>")
    s.add_argument("--batch-size", type=int, help="explanations per AV batch (default: as explain-all)")
    add_sampling_args(s)
    s.set_defaults(func=cmd_sweep)


def check_sweep_args(args: argparse.Namespace):
    from ..core.corpus.selection import make_selection

    if (args.ray_address or args.ray_actors) and not args.ray:
        raise InputError("--ray-address / --ray-actors go with --ray.")
    if args.ray:
        from ..core.corpus.cluster import require_ray

        require_ray()
    for flag in ("max_explain_tokens", "batch_size", "limit", "shard_positions", "wave_positions", "ray_actors"):
        _positive(getattr(args, flag), "--" + flag.replace("_", "-"))
    if args.others < 0:
        raise InputError(f"--others is {args.others}; it must be 0 (off) or more.")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise InputError(f"--temperature is {args.temperature}; it must be 0 (greedy) or above.")
    if args.av_prompt is not None and args.av_prompt.count(INJECT) != 1:
        raise InputError(f"--av-prompt must contain {INJECT} exactly once, where the activation goes.")
    if args.prior_text is not None and not args.prior_text.strip():
        raise InputError("--prior-text is empty; give a sentence, or --no-prior to turn the control off.")
    return make_selection(args.role, args.regex, args.regex_context, args.every, args.most_surprising,
                          args.max_per_conversation)


def use_extra_pair(args: argparse.Namespace) -> None:
    """--pair extra: the sweep's AV and AR are --extra-pair's (checked against the subject from
    files, before any model loads); a sweep runs one pair, so --extra-pair alone is refused."""
    from ..core.options import PAIR_FLAG, from_args, parse_pair_spec

    spec = getattr(args, "extra_pair", None)
    if args.pair == "main":
        if spec:
            raise InputError(f"A sweep runs one pair: add --pair extra to sweep with {PAIR_FLAG}'s AV and AR, "
                             f"or leave {PAIR_FLAG} out.")
        return
    if not spec:
        raise InputError(f"--pair extra needs {PAIR_FLAG} av=DIR,ar=DIR (the pair to sweep with).")
    if args.av or args.ar:
        raise InputError(f"--pair extra takes its AV and AR from {PAIR_FLAG}: leave --av / --ar out.")
    from ..core.runtime.precheck import check_extra_pair_args

    pair = parse_pair_spec(spec)
    check_extra_pair_args(from_args(args), progress)  # its layer and width against the subject
    args.av, args.ar, args.extra_pair = pair.av, pair.ar, None


def sweep_options(args, selection):
    from ..core.corpus import controls
    from ..core.corpus.sweep import SweepOptions

    prior = None if args.no_prior else (args.prior_text or controls.PRIOR_TEXT)
    return SweepOptions(selection, sampling(args), args.av_prompt, args.batch_size, args.others, prior,
                        args.save_activations, args.wave_positions)


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..core.corpus import plan as planning
    from ..core.corpus import shards
    from ..core.corpus.reader import read_corpus

    selection = check_sweep_args(args)
    use_extra_pair(args)
    options = engine_options(args)
    opts = sweep_options(args, selection)
    corpus = read_corpus(args.dataset)
    out = Path(args.out).expanduser()
    identity = {"input_sha256": corpus.digest, "shard_positions": args.shard_positions,
                "models": {k: getattr(options, k) for k in ("preset", "subject", "av", "ar", "layer", "quant",
                                                             "fve_variance")},
                **opts.identity()}
    if options.subject_quant:  # only when given, so sweeps started before the flag existed still resume
        identity["models"]["subject_quant"] = options.subject_quant
    old = shards.prepare_out(out, identity, args.force) if not args.dry_run else None
    tokenizer, limit_tokens, subject = planning.subject_tokenizer(options)
    plan = planning.make_plan(corpus, selection, tokenizer, limit_tokens, subject, args.shard_positions)
    say(visible(planning.describe(plan, corpus, args.limit)), file=sys.stderr)
    if args.dry_run and args.no_warmup:
        return 0
    # The subject holds one conversation at a time, none longer than the plan's longest: its KV
    # reservation need not be a chat's 4,096 tokens (on one card that is ~2 GiB for a 27B).
    options = dataclasses.replace(options, subject_context_tokens=planning.longest_conversation(plan))
    from ..core.corpus.sweep import model_identity, run_sweep, shard_targets, todo
    from ..core.runtime.engine import Engine
    from ..core.types import ModelInfo

    if args.ray and not args.dry_run:
        from ..core.corpus.cluster import RaySweep

        say("[sweep] starting Ray engine actors (each loads the models)…", file=sys.stderr)
        cluster = RaySweep(options, args.ray_address, args.ray_actors)
        info = ModelInfo.from_json(cluster.info_json)
        say(f"[sweep] {len(cluster.actors)} actor(s) ready", file=sys.stderr)
    else:
        engine = Engine(options)
        engine.load(progress)
        info = engine.info
    if args.dry_run:
        return print_estimate(engine, plan, opts, args.limit)
    if old is not None and old.get("models") and old["models"] != model_identity(info):
        diff = shards.differences(old["models"], model_identity(info))
        if not args.force:
            raise InputError(f"{out} was swept with other model files, so its rows must not mix with these:\n  "
                             + "\n  ".join(diff) + "\nUse another --out folder, or --force to discard it.")
        shards.remove_sweep_files(out)
    shards.write_manifest(out, {"identity": identity, "models": model_identity(info),
                                "model_info": info.to_json(), "input": str(Path(args.dataset).resolve()),
                                "input_kind": corpus.kind, "plan": plan.to_json(), "versions": shards.versions(),
                                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    line = ProgressLine("sweep")
    left = len(todo(out, plan, args.limit))
    say(f"[sweep] {len(plan.shards) - left} of {len(plan.shards)} shards already done; {left} to go",
          file=sys.stderr)
    show = lambda p: line.update(p.rows_done, p.rows_total, p.rate, p.eta,  # noqa: E731
                                 f"shard {p.shards_done}/{p.shards_total}")
    final = cluster.run(plan, out, opts, args.limit, show) if args.ray else \
        run_sweep(engine, plan, out, opts, args.limit, show)
    line.update(final.rows_done, final.rows_total, final.rate, 0, f"{final.shards_done} shards", final=True)
    complete = sum(shard_targets(plan, None)) == sum(shards.shard_row_count(shards.shard_path(out, k)) or 0
                                                     for k in range(len(plan.shards)))
    say(f"{'sweep complete' if complete else 'sweep written (partial: --limit)'}: {out} "
          f"(shards/*.parquet, index.sqlite; `nla-tui search {out} QUERY`, `nla-tui report {out}`)")
    return 0


def first_positions(plan, n: int) -> list[tuple[int, int]]:
    """(shard, target) pairs covering the sweep's first n positions."""
    out = []
    for k, rows in enumerate(plan.shard_rows):
        if n <= 0:
            break
        if rows:
            out.append((k, min(rows, n)))
            n -= rows
    return out


def print_estimate(engine, plan, opts, limit) -> int:
    from ..core.corpus.sweep import explain_shard, explain_wave

    first = next((k for k, r in enumerate(plan.shard_rows) if r), None)
    if first is None:
        say("nothing to explain: the selection keeps no position", file=sys.stderr)
        return 0
    cuda = engine.info.device.startswith("cuda")
    wave = first_positions(plan, WARMUP_POSITIONS_CUDA if cuda else WARMUP_POSITIONS)
    n = sum(t for _, t in wave)
    explain_shard(engine, plan, first, 1, opts, None)  # the first pass pays one-time costs
    t0 = time.monotonic()
    explain_wave(engine, plan, wave, opts, None)
    rate = n / (time.monotonic() - t0)
    total = min(plan.n_positions, limit) if limit else plan.n_positions
    say(f"warm-up: {n} positions at {rate:.2f} positions/s on {engine.info.device} ({engine.info.quant}) → "
          f"about {duration(total / rate)} for {total:,} positions", file=sys.stderr)
    return 0
