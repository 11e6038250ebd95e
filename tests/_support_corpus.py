"""A sweep output folder written without models (tests of search, report, the corpus screen):
rows as core/corpus/sweep.py writes them, through the same shard writer and index."""

from __future__ import annotations

from pathlib import Path

from nla_tui.core.corpus import index
from nla_tui.core.corpus.shards import ROW_FIELDS, write_manifest, write_shard

FRANCE = [{"role": "user", "content": "What is the capital of France?"},
          {"role": "assistant", "content": "Paris is the capital of France."}]


def row(**kw) -> dict:
    base = {name: None for name, _ in ROW_FIELDS}
    base.update(conversation_id="c", conversation=0, message_index=1, turn=0, token_index=0, token_id=1,
                token_text="x", role="model", context_before="", context_after="", surprise=1.0,
                activation_norm=10.0, explanation="", closed=True, truncated=False, warnings=[], cos=0.9,
                mse_nrm=0.2, fve_nrm=0.5, label="mediocre", verdict="mediocre", caveats=[], specificity=0.1, fve_others_mean=0.4, others=3,
                prior_fve=0.05, prior_cos=0.3, subject="demo:subject", av="demo:av", ar="demo:ar",
                precision="fp32", layer=12, temperature=0.0, top_p=1.0, max_new_tokens=16, seed=0, av_prompt=None,
                shard=0)
    base.update(kw)
    return base


def write_sweep(out: Path, shards: list[list[dict]], messages: dict[str, list[dict]] | None = None,
                index_it: bool = True) -> Path:
    write_manifest(out, {"identity": {"controls": {"others": 3, "prior_text": "A token in a piece of text."}},
                         "model_info": {"subject": "demo:subject", "av": "demo:av", "ar": "demo:ar", "layer": 12,
                                        "quant": "fp32", "device": "cpu"},
                         "input": "/data/convs.jsonl", "plan": {"positions": sum(len(s) for s in shards)},
                         "started": "2026-12-06T04:00:00Z"})
    db = index.connect(out) if index_it else None
    for k, rows in enumerate(shards):
        path = write_shard(out, k, [dict(r, shard=k) for r in rows])
        if db is not None:
            convs = {r["conversation_id"] for r in rows}
            index.add_shard(db, k, [dict(r, shard=k) for r in rows], path.stat().st_mtime_ns,
                            [(c, (messages or {}).get(c, FRANCE)) for c in sorted(convs)])
    if db is not None:
        db.close()
    return out
