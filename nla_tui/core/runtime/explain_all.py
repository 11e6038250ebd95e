"""Explain-all batching: how many rows per AV pass, and the parked path (see parking.py).

Engine.explain asks `plan_for` how to run; with a plan that parks, `explain_parked` runs
every AV pass with the subject and the AR in host memory, then brings them back and scores
all the explanations with the AR. Cached explanations are served first either way. Both
paths build explanations through core/nla/explain.py (write, then finish). Nothing here
knows the Engine: it gets the models and the caches it needs, so the two never import
each other.
"""

from __future__ import annotations

import threading
from typing import Callable

import numpy as np

from ..models.loading import text_config
from ..models.parking import KV_SHARE_PARKED, ExplainPlan, bytes_on, free_bytes, host_available, parked, plan_explain, rows_that_fit
from ..nla import explain as nla_explain
from ..types import Explanation, ModelInfo, Sampling
from .engine_caches import EngineCaches

CPU_BATCH = 16  # CPU: no KV budget to speak of; 16 rows keep streaming responsive


def kv_bytes_per_row(av, max_new_tokens: int) -> int:
    """One row's bf16 KV cache over prompt + explanation, plus its fp32 logits."""
    cfg = text_config(av.model)
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    tokens = len(av.canonical_ids) + max_new_tokens
    return 2 * cfg.num_hidden_layers * heads * head_dim * 2 * tokens + 8 * cfg.vocab_size


def plan_for(av, others: dict, policy: str, rows: int, max_new_tokens: int, cap: int = 160) -> ExplainPlan:
    """The explain-all plan: on CUDA from the memory free on the AV's card now (and what
    parking `others` — the subject's and the AR's models — would add); on CPU a fixed batch,
    never parked unless the policy is "always" (tests)."""
    av_dev = av.device
    if av_dev.type != "cuda":
        batch = min(CPU_BATCH, max(1, rows))
        return ExplainPlan(policy == "always" and rows > 1, batch, "CPU", cap)
    per_row = kv_bytes_per_row(av, max_new_tokens)
    plan = plan_explain(rows, per_row, free_bytes(av_dev), bytes_on(others.values(), av_dev),
                        host_available(), cap)
    if policy == "never" and plan.park:
        return plan_explain(rows, per_row, free_bytes(av_dev), 0, None, cap)
    if policy == "always" and not plan.park and rows > 1:
        return ExplainPlan(True, plan.batch, "parking forced", cap)
    return plan


def explain_parked(av, ar, subject_model, caches: EngineCaches, info: ModelInfo, vectors: np.ndarray,
                   indices: list[int], sampling: Sampling, prompt: str | None,
                   on_text: nla_explain.OnText | None, cancel: threading.Event | None,
                   on_batch: Callable[[list[Explanation]], None] | None, plan: ExplainPlan,
                   park_state: dict, on_pass: Callable[[int], None] | None = None) -> tuple[list[Explanation], dict]:
    """Explain `vectors` (the activations at `indices`) with the subject and AR parked during
    the AV passes (`on_pass(rows)` after each). Returns the explanations in order — when cancelled, those whose AV pass
    finished, scored — and what was done (park, batch, reason) for the engine to report."""
    from ..models import fast_decode

    hits = caches.cached(info, vectors, sampling, prompt, indices)
    done: dict[int, Explanation] = {k: e for k, e in enumerate(hits) if e is not None}
    if done and on_batch:
        on_batch([done[k] for k in sorted(done)])
    todo = [k for k in range(len(indices)) if k not in done]
    raws: dict[int, str] = {}
    ran = {"park": True, "batch": plan.batch, "reason": plan.reason}
    # Captured decode graphs of a parked model point at storage that is about to move.
    fast_decode.clear(subject_model)
    fast_decode.clear(ar.model)
    with parked({"subject": subject_model, "ar": ar.model}, av.device, state=park_state):
        try:
            batch = plan.batch
            if av.device.type == "cuda":  # the memory actually free now that they are parked
                per_row = kv_bytes_per_row(av, sampling.max_new_tokens)
                batch = rows_that_fit(free_bytes(av.device), per_row, plan.cap, max(1, len(todo)), KV_SHARE_PARKED)
            ran.update(batch=batch, parked=list(park_state.get("parked", [])))
            for b in range(0, len(todo), batch):
                if cancel is not None and cancel.is_set():
                    break
                chunk = todo[b:b + batch]
                out = nla_explain.write(av, vectors[chunk], sampling, prompt, [indices[k] for k in chunk],
                                        on_text, cancel)
                if out is None:
                    break
                raws.update(zip(chunk, out))
                if on_pass:
                    on_pass(len(chunk))
        finally:
            # The big bucket's KV cache and graphs go *before* the block ends: leaving the block
            # brings the subject and the AR back, and they need that room (an H100 capped at
            # 48 GiB could not unpark them after a 2,000-position sweep wave while it was held).
            fast_decode.clear(av.model)
    # Score what the AV finished, with the AR back on its card.
    order = sorted(raws)
    step = max(1, plan.batch)
    for b in range(0, len(order), step):
        chunk = order[b:b + step]
        fresh = nla_explain.finish(av, ar, vectors[chunk], [raws[k] for k in chunk], [indices[k] for k in chunk],
                                   sampling, prompt)
        caches.store(info, vectors[chunk], sampling, prompt, fresh)
        done.update(zip(chunk, fresh))
        if on_batch:
            on_batch(fresh)
    return [done[k] for k in sorted(done)], ran
