"""What the GPU bench sections share: the 27B shape constants, the device switch DEV (a
dry run on CPU flips it), timing and memory helpers. gpu.py runs the sections; gpu_parked,
gpu_int4 and gpu_steer hold some of them; all of them import from here, so none imports
gpu.py back.
"""

from __future__ import annotations

import time

import torch

from nla_tui.core.models import fast_decode as fd

from .common import median_time
from .shapes import gemma3_27b_config

AV_PROMPT = 48  # tokens in the AV's chat-templated prompt (27B release template, rounded up)
SLOT = 20  # injection position: the shared prefix is everything before it
LAYER_K = 41
GIB = 2**30


# A dry run on CPU with a tiny config checks this script end to end before it
# spends device time (python -m bench gpu --dry-run).
DEV = {"device": "cuda", "mode": "nf4", "tiny": False}


def _sync():
    if DEV["device"] == "cuda":
        torch.cuda.synchronize()


def _alloc() -> int:
    return torch.cuda.memory_allocated() if DEV["device"] == "cuda" else 0


def _reset_peak() -> None:
    if DEV["device"] == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak() -> tuple[int, int]:
    if DEV["device"] == "cuda":
        return torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
    return 0, 0


def _cfg(layers: int):
    if not DEV["tiny"]:
        return gemma3_27b_config(layers)
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=max(2, layers // 10),
                            num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
                            sliding_window=32, max_position_embeddings=4096)


def _gib(x: int) -> float:
    return round(x / GIB, 2)


def _av_embeds(model, n: int, seed: int = 0) -> torch.Tensor:
    """n prompts: one template, a different injected vector in each row."""
    dev = model.get_input_embeddings().weight.device  # cuda:1 for a model on the second card
    g = torch.Generator(device=dev).manual_seed(1234)
    ids = torch.randint(10, model.config.vocab_size - 10, (1, AV_PROMPT), device=dev, generator=g)
    base = model.get_input_embeddings()(ids)
    emb = base.expand(n, -1, -1).clone()
    g.manual_seed(seed)
    v = torch.randn(n, base.shape[-1], device=dev, generator=g)
    emb[:, SLOT] = (v / v.norm(dim=-1, keepdim=True) * base[0].norm(dim=-1).mean() * 4).to(emb.dtype)
    return emb


@torch.inference_mode()
def hf_ms_per_step(model, emb: torch.Tensor, n: int) -> float:
    """Eager HF generate; (t(n) - t(2)) / (n - 2) isolates the decode step from prefill."""
    def gen(k):
        model.generate(inputs_embeds=emb, attention_mask=torch.ones(emb.shape[:2], dtype=torch.long, device=emb.device),
                       max_new_tokens=k, min_new_tokens=k, do_sample=False, pad_token_id=0,
                       temperature=None, top_p=None, top_k=None)
    gen(2)
    t2 = median_time(lambda: gen(2), 1, _sync)
    tn = median_time(lambda: gen(n), 1, _sync)
    return 1000 * (tn - t2) / (n - 2)


@torch.inference_mode()
def step_ms(model, batch: int, max_len: int, steps: int = 20) -> tuple[float, bool]:
    """ms per captured decode step at one batch bucket (the graph replay alone)."""
    r = fd._runner(model, batch, max_len, DEV["device"] == "cuda")
    r.prefill(_av_embeds(model, batch)[:, :AV_PROMPT], 0)
    ids = torch.zeros(batch, dtype=torch.long, device=model.get_input_embeddings().weight.device)
    r.step(ids, AV_PROMPT)
    steps = max(1, min(steps, max_len - AV_PROMPT - 2))
    _sync()
    t = time.perf_counter()
    for i in range(steps):
        r.step(ids, AV_PROMPT + 1 + i)
    _sync()
    graphed = r.graph is not None
    fd.clear(model)
    return 1000 * (time.perf_counter() - t) / steps, graphed


def cap_memory(gib: float | None) -> None:
    """Enforce a per-process cap on card 0 (None lifts it): the allocator then fails as a card
    of that size would."""
    if DEV["device"] != "cuda":
        return
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(1.0 if gib is None else min(1.0, gib * GIB / total), 0)
