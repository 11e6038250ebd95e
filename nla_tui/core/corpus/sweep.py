"""Run a sweep: the engine over a plan, a wave of shards at a time (the one corpus module that
loads models).

A wave is consecutive unfinished shards holding at least `wave_positions` positions (one
shard on CPU). For each wave: capture each conversation of its shards (Engine.set_conversation,
the `--messages` path) and choose the positions (selection.py, now with the surprise known);
explain all the wave's positions in one Engine.explain_planned call (the AV then the AR, as
`nla-tui run`'s explain-all: batched across conversations, and on a card too small for a
full AV batch beside the subject and the AR, those two parked in host memory once for the
whole wave, not once per shard); then per shard add the controls (controls.py), write it
atomically and index it. A kill loses at most the wave in progress.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..caveats import median_norm, position_caveats, verdict
from ..errors import InputError
from ..fallbacks import with_near_duplicates
from ..types import Explanation, Sampling, TokenInfo
from . import controls, index, shards
from .plan import Plan, PlannedConversation, pack_shards
from .reader import iter_messages_json
from .selection import Selection, select_positions, surprise

CONTEXT_BEFORE, CONTEXT_AFTER = 8, 4  # tokens of context kept with each row (search hits show them)
# Positions per wave on CUDA: parking the subject and the AR (~26 GiB for the 27B pair) costs a
# few seconds each way; 2,048 positions are minutes of AV work at full batch, so the copies
# stay a few percent, and a kill loses at most those minutes.
CUDA_WAVE_POSITIONS = 2048


@dataclass
class SweepOptions:
    selection: Selection
    sampling: Sampling = field(default_factory=Sampling)
    av_prompt: str | None = None
    batch_size: int | None = None  # None: the engine's explain-all batch (16 on CPU, by free memory on CUDA)
    others: int = controls.DEFAULT_OTHERS  # K for the specificity control; 0 turns it off
    prior_text: str | None = controls.PRIOR_TEXT  # None turns the prior control off
    save_activations: bool = False
    # Positions explained per Engine call (several shards; see the module's docstring).
    # None: CUDA_WAVE_POSITIONS on a GPU, one shard at a time on CPU. Not part of identity():
    # it changes when rows are written, not what they hold.
    wave_positions: int | None = None

    def identity(self) -> dict:
        """The options a resumed run must share with the output it adds to."""
        return {"selection": self.selection.to_json(), "sampling": self.sampling.to_json(),
                "av_prompt": self.av_prompt, "controls": {"others": self.others, "prior_text": self.prior_text},
                "save_activations": self.save_activations, "row_schema": shards.ROW_SCHEMA}


@dataclass
class SweepProgress:
    rows_done: int  # rows written in this run
    rows_total: int  # rows this run has to write
    shards_done: int
    shards_total: int
    elapsed: float

    @property
    def rate(self) -> float:
        return self.rows_done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        return (self.rows_total - self.rows_done) / self.rate if self.rate > 0 else None


def model_identity(info) -> dict:
    return {"subject": info.subject, "av": info.av, "ar": info.ar, "layer": info.layer, "quant": info.quant,
            "revision": info.revision, "fve_variance": info.fve_variance}


def shard_targets(plan: Plan, limit: int | None) -> list[int]:
    """Rows each shard must hold at the end of this run: all of them, or under --limit the
    first `limit` positions of the sweep (so the last shard reached may be short)."""
    if limit is None:
        return list(plan.shard_rows)
    return [max(0, min(r, limit - s)) for r, s in zip(plan.shard_rows, plan.shard_starts())]


def todo(out: Path, plan: Plan, limit: int | None) -> list[int]:
    """Shards this run writes: those whose file holds fewer rows than this run wants."""
    targets = shard_targets(plan, limit)
    return [k for k, t in enumerate(targets) if t and (shards.shard_row_count(shards.shard_path(out, k)) or 0) < t]


def wave_size(device: str, opts: SweepOptions) -> int:
    """Positions per wave for an engine on `device` (see SweepOptions.wave_positions)."""
    if opts.wave_positions is not None:
        return max(1, opts.wave_positions)
    return CUDA_WAVE_POSITIONS if device.startswith("cuda") else 1


def waves(work: list[int], targets: list[int], positions: int) -> list[list[int]]:
    """Consecutive shards of `work` grouped until each group holds at least `positions` rows
    (the last may hold fewer; positions=1 gives one shard per wave): plan.pack_shards's rule,
    one level up."""
    return [[work[i] for i in group] for group in pack_shards([targets[k] for k in work], positions)]


def run_sweep(engine, plan: Plan, out: Path, opts: SweepOptions, limit: int | None = None,
              on_progress: Callable[[SweepProgress], None] | None = None,
              cancel: threading.Event | None = None) -> SweepProgress:
    out = Path(out)
    targets, work, db = prepare_run(out, plan, limit)
    total = sum(targets[k] for k in work)
    prior_recon = prior_reconstruction(engine, opts)
    start, done, finished = time.monotonic(), 0, 0
    progress = SweepProgress(0, total, 0, len(work), 0.0)
    try:
        for wave in waves(work, targets, wave_size(engine.info.device, opts)):
            if cancel is not None and cancel.is_set():
                break

            def on_rows(rows: int) -> None:
                if on_progress:
                    on_progress(SweepProgress(done + rows, total, finished, len(work), time.monotonic() - start))

            results = explain_wave(engine, plan, [(k, targets[k]) for k in wave], opts, prior_recon, on_rows,
                                   cancel)
            if results is None:  # cancelled: nothing of this wave is written
                break
            # Every row of the wave is explained: count them now, so that the progress reported
            # while its shards are written never drops below what the AV passes reported.
            done += sum(len(rows) for rows, _, _ in results)
            for k, (rows, acts, convs) in zip(wave, results):
                commit_shard(out, db, k, rows, acts, convs, opts)
                finished += 1
                progress = SweepProgress(done, total, finished, len(work), time.monotonic() - start)
                if on_progress:
                    on_progress(progress)
    finally:
        db.close()
    return progress


def commit_shard(out: Path, db, k: int, rows: list[dict], acts, convs: list[PlannedConversation],
                 opts: SweepOptions) -> None:
    """Write shard k (atomically), then index it with its conversations' messages: the one
    writer for the in-process and the Ray sweep."""
    path = shards.write_shard(out, k, rows, acts if opts.save_activations else None)
    index.add_shard(db, k, rows, path.stat().st_mtime_ns,
                    [(c.conversation.id, list(iter_messages_json(c.conversation))) for c in convs])


def prepare_run(out: Path, plan: Plan, limit: int | None):
    """Targets, the shards to do, and the index brought up to date (temp files of a killed run removed)."""
    Path(out).mkdir(parents=True, exist_ok=True)
    targets = shard_targets(plan, limit)
    work = todo(out, plan, limit)
    shards.remove_stale_temps(out)
    db = index.connect(out)
    index.sync(out, db)
    return targets, work, db


def prior_reconstruction(engine, opts: SweepOptions):
    return engine.ar.reconstruct([opts.prior_text])[0] if opts.prior_text else None


def flag_near_duplicates_per_conversation(picked, exps: list[Explanation]) -> list[Explanation]:
    """The cross-position fallback (core/fallbacks.py) within each conversation of the shard."""
    rows_of: dict[int, list[int]] = {}
    for j, p in enumerate(picked):
        rows_of.setdefault(p[0], []).append(j)
    out = list(exps)
    for rows in rows_of.values():
        toks = picked[rows[0]][2]
        for j, e in zip(rows, with_near_duplicates([exps[j] for j in rows], {t.index: t.text for t in toks})):
            out[j] = e
    return out


@dataclass
class Gathered:
    """One shard's chosen positions, captured: for each, (conversation number, its plan item,
    its tokens, token index, surprise, the specificity control's other positions)."""
    picked: list[tuple[int, PlannedConversation, list[TokenInfo], int, float | None, list[int]]]
    vectors: np.ndarray  # (positions, d) float32
    others: list[np.ndarray]  # per position, the activations of its control positions
    convs: list[PlannedConversation]


def gather_shard(engine, plan: Plan, k: int, target: int, opts: SweepOptions) -> Gathered:
    """Capture shard k's conversations (the subject's forward pass) and choose its first
    `target` positions."""
    picked, vectors, others, convs = [], [], [], []
    for c in plan.shards[k]:
        pc = plan.items[c]
        if len(picked) >= target:
            break
        if pc.n_positions == 0:
            continue
        engine.set_conversation(pc.conversation.messages)
        toks = engine.tokens
        if [t.token_id for t in toks] != pc.ids:
            raise InputError(f"{pc.conversation.where}: the subject tokenized this conversation differently from "
                             f"the check before loading; was the model changed while the sweep ran?")
        sur = surprise(toks)
        positions = select_positions(opts.selection, [t.text for t in toks], [t.role for t in toks], sur)
        pool: dict[str, list[int]] = {}
        for t in toks:
            pool.setdefault(t.role, []).append(t.index)
        convs.append(pc)
        for i in positions[:target - len(picked)]:
            picked.append((c, pc, toks, i, sur[i], controls.pick_others(i, pool[toks[i].role], opts.others)))
            vectors.append(engine.activations[i])
            others.append(engine.activations[picked[-1][5]])
    d = engine.info.d_model
    return Gathered(picked, np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, d), np.float32),
                    others, convs)


def explain_wave(engine, plan: Plan, wave: list[tuple[int, int]], opts: SweepOptions, prior_recon,
                 on_rows: Callable[[int], None] | None = None, cancel: threading.Event | None = None
                 ) -> list[tuple[list[dict], np.ndarray, list[PlannedConversation]]] | None:
    """(rows, activations, conversations) of each (shard, target) in `wave`, its positions
    explained in one Engine.explain_planned call; None when cancelled before every
    explanation was written."""
    gathered = [gather_shard(engine, plan, k, target, opts) for k, target in wave]
    vectors = np.concatenate([g.vectors for g in gathered])
    exps: list[Explanation] = []
    if len(vectors):
        labels = [p[3] for g in gathered for p in g.picked]
        written = 0

        def on_pass(rows: int) -> None:
            nonlocal written
            written += rows
            if on_rows:
                on_rows(written)

        exps = engine.explain_planned(vectors, labels, opts.sampling, opts.av_prompt, cancel=cancel,
                                      batch_size=opts.batch_size, on_pass=on_pass)
        if len(exps) < len(labels):
            return None
    if cancel is not None and cancel.is_set():
        return None
    out, at = [], 0
    for (k, _), g in zip(wave, gathered):
        mine = exps[at:at + len(g.picked)]
        at += len(g.picked)
        out.append((shard_rows(engine, k, g, mine, opts, prior_recon), g.vectors, g.convs))
    return out


def explain_shard(engine, plan: Plan, k: int, target: int, opts: SweepOptions, prior_recon,
                  on_rows: Callable[[int], None] | None = None, cancel: threading.Event | None = None):
    """The rows of shard k (its first `target` positions), their activations, and the
    conversations they came from: a wave of one shard (the estimate's warm-up, the bench)."""
    result = explain_wave(engine, plan, [(k, target)], opts, prior_recon, on_rows, cancel)
    if result is None:
        return [], np.zeros((0, engine.info.d_model), np.float32), []
    return result[0]


def shard_rows(engine, k: int, g: Gathered, exps: list[Explanation], opts: SweepOptions, prior_recon
               ) -> list[dict]:
    """Shard k's rows: each explanation with its score, the controls (one more AR pass for
    the specificity control), the caveat-aware verdict and the recipe."""
    if not g.picked:
        return []
    picked, vectors, others = g.picked, g.vectors, g.others
    exps = flag_near_duplicates_per_conversation(picked, exps)
    recons = engine.ar.reconstruct([e.text for e in exps]) if opts.others else None
    info, ar = engine.info, engine.ar
    rows = []
    medians: dict[int, float] = {}  # per conversation, for the outlier caveat
    for j, ((c, pc, toks, i, s, _), e) in enumerate(zip(picked, exps)):
        own = e.score.fidelity if e.score else None
        spec, mean_others = (controls.specificity(recons[j], own, others[j], ar.meta.mse_scale, ar.variance)
                             if recons is not None else (None, None))
        prior_fve, prior_cos = (controls.prior(prior_recon, vectors[j], ar.meta.mse_scale, ar.variance)
                                if prior_recon is not None else (None, None))
        t = toks[i]
        msgs = pc.conversation.messages
        # The verdict the TUI's pane and `nla-tui run` give this position (core/caveats.py):
        # never "good" at a special token, in the first tokens or at an outlier norm.
        caveats = position_caveats(toks, i, medians.setdefault(c, median_norm(toks)))
        rows.append({
            "conversation_id": pc.conversation.id, "conversation": c, "message_index": t.turn,
            "turn": max(0, sum(m.role == "user" for m in msgs[:t.turn + 1]) - 1),
            "token_index": i, "token_id": t.token_id, "token_text": t.text, "role": t.role,
            "context_before": "".join(x.text for x in toks[max(0, i - CONTEXT_BEFORE):i]),
            "context_after": "".join(x.text for x in toks[i + 1:i + 1 + CONTEXT_AFTER]),
            "surprise": s, "activation_norm": t.norm,
            "explanation": e.text, "closed": not e.truncated, "truncated": e.truncated, "warnings": e.warnings,
            "cos": e.score.cos if e.score else None, "mse_nrm": e.score.mse_nrm if e.score else None,
            "fve_nrm": e.score.fve_nrm if e.score else None, "label": e.score.label if e.score else "",
            "verdict": verdict(e.score, caveats) if e.score else "", "caveats": [cv.kind for cv in caveats],
            "specificity": spec, "fve_others_mean": mean_others, "others": len(others[j]),
            "prior_fve": prior_fve, "prior_cos": prior_cos,
            "subject": info.subject, "av": info.av, "ar": info.ar, "precision": info.quant, "layer": info.layer,
            "temperature": e.sampling.temperature, "top_p": e.sampling.top_p,
            "max_new_tokens": e.sampling.max_new_tokens, "seed": e.sampling.seed, "av_prompt": e.prompt,
            "shard": k,
        })
    return rows
