"""Explain-all batching: how many rows per AV pass, and the parked path (see parking.py).

Engine.explain asks `plan_for` how to run; with a plan that parks, `explain_parked` runs
every AV pass with the subject and the AR in host memory, then brings them back and scores
all the explanations with the AR. Cached explanations are served first either way.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable

from ..nla.av import injection_warnings, parse_explanation
from ..models.loading import text_config
from ..models.parking import KV_SHARE_PARKED, ExplainPlan, bytes_on, free_bytes, host_available, parked, plan_explain, rows_that_fit
from ..types import Explanation, Sampling

if TYPE_CHECKING:
    from .engine import Engine

CPU_BATCH = 16  # CPU: no KV budget to speak of; 16 rows keep streaming responsive


def kv_bytes_per_row(av, max_new_tokens: int) -> int:
    """One row's bf16 KV cache over prompt + explanation, plus its fp32 logits."""
    cfg = text_config(av.model)
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    tokens = len(av.canonical_ids) + max_new_tokens
    return 2 * cfg.num_hidden_layers * heads * head_dim * 2 * tokens + 8 * cfg.vocab_size


def plan_for(engine: "Engine", rows: int, max_new_tokens: int, cap: int = 160) -> ExplainPlan:
    """The engine's explain-all plan: on CUDA from the memory free on the AV's card now (and
    what parking the subject and the AR would add); on CPU a fixed batch, never parked unless
    the policy is "always" (tests)."""
    policy = getattr(engine, "park_policy", "auto")
    av_dev = engine.av.device
    others = {"subject": engine.subject.model, "ar": engine.ar.model}
    if av_dev.type != "cuda":
        batch = min(CPU_BATCH, max(1, rows))
        return ExplainPlan(policy == "always" and rows > 1, batch, "CPU", cap)
    per_row = kv_bytes_per_row(engine.av, max_new_tokens)
    plan = plan_explain(rows, per_row, free_bytes(av_dev), bytes_on(others.values(), av_dev),
                        host_available(), cap)
    if policy == "never" and plan.park:
        return plan_explain(rows, per_row, free_bytes(av_dev), 0, None, cap)
    if policy == "always" and not plan.park and rows > 1:
        return ExplainPlan(True, plan.batch, "parking forced", cap)
    return plan


def explain_parked(engine: "Engine", indices: list[int], sampling: Sampling, prompt: str | None,
                   on_delta: Callable[[int, str], None] | None, cancel: threading.Event | None,
                   on_batch: Callable[[list[Explanation]], None] | None, plan: ExplainPlan) -> list[Explanation]:
    """Explain `indices` with the subject and AR parked during the AV passes. Returns the
    explanations in order; when cancelled, those whose AV pass finished (scored)."""
    from ..models import fast_decode

    av, ar = engine.av, engine.ar
    vectors = engine.activations[indices]
    hits = engine.caches.cached(engine.info, vectors, sampling, prompt, indices)
    done: dict[int, Explanation] = {k: e for k, e in enumerate(hits) if e is not None}
    if done and on_batch:
        on_batch([done[k] for k in sorted(done)])
    todo = [k for k in range(len(indices)) if k not in done]
    raws: dict[int, str] = {}
    state = engine.park_state
    # Captured decode graphs of a parked model point at storage that is about to move.
    fast_decode.clear(engine.subject.model)
    fast_decode.clear(ar.model)
    try:
        with parked({"subject": engine.subject.model, "ar": ar.model}, av.device, state=state):
            batch = plan.batch
            if av.device.type == "cuda":  # the memory actually free now that they are parked
                per_row = kv_bytes_per_row(av, sampling.max_new_tokens)
                batch = rows_that_fit(free_bytes(av.device), per_row, plan.cap, max(1, len(todo)), KV_SHARE_PARKED)
            engine.last_explain_plan = {"park": True, "batch": batch, "reason": plan.reason,
                                        "parked": list(state.get("parked", []))}
            for b in range(0, len(todo), batch):
                if cancel is not None and cancel.is_set():
                    break
                chunk = todo[b:b + batch]
                stream = (lambda r, t, c=chunk: on_delta(indices[c[r]], t)) if on_delta else None
                out = av.generate(vectors[chunk], sampling, prompt, stream, cancel)
                if cancel is not None and cancel.is_set():
                    break  # a cancelled pass returns partial rows: drop them
                raws.update(zip(chunk, out))
    finally:
        fast_decode.clear(av.model)  # the big bucket's KV cache: the AR needs the room back
    # Score what the AV finished, with the AR back on its card.
    order = sorted(raws)
    step = max(1, plan.batch)
    for b in range(0, len(order), step):
        chunk = order[b:b + step]
        parsed = [parse_explanation(raws[k]) for k in chunk]
        scores = ar.score([t for t, _ in parsed], vectors[chunk])
        fresh = [Explanation(index=indices[k], text=t, raw=raws[k], sampling=sampling, prompt=prompt, score=s,
                             truncated=tr, warnings=injection_warnings(raws[k], tr, av.meta.injection_char),
                             untrained_av=av.meta.untrained)
                 for k, (t, tr), s in zip(chunk, parsed, scores)]
        engine.caches.store(engine.info, vectors[chunk], sampling, prompt, fresh)
        done.update(zip(chunk, fresh))
        if on_batch:
            on_batch(fresh)
    return [done[k] for k in sorted(done)]
