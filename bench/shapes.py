"""Gemma-3-27B-shaped models with random weights, built directly on one GPU.

Speed and memory depend on shape, dtype and kernels, not on weight values, so
these give honest timings for the 27B subject/AV (62 layers) and AR (42 layers
+ a d×d value head) without downloading anything. Adapted from
the random-weight builder used for the first measurements (BENCHMARKS.md).
"""

from __future__ import annotations

import torch


def gemma3_27b_config(layers: int = 62):
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        vocab_size=262208, hidden_size=5376, intermediate_size=21504,
        num_hidden_layers=layers, num_attention_heads=32, num_key_value_heads=16,
        head_dim=128, query_pre_attn_scalar=168, sliding_window=1024,
        max_position_embeddings=131072,
    )


@torch.no_grad()
def build(cfg, mode: str = "nf4", device: str = "cuda"):
    """Random weights, quantised Linear by Linear so the bf16 model never exists whole."""
    from transformers import Gemma3ForCausalLM

    with torch.device("meta"):
        model = Gemma3ForCausalLM(cfg)
    gen = torch.Generator(device=device).manual_seed(0)
    for mod in list(model.modules()):
        for name, child in list(mod.named_children()):
            if not isinstance(child, torch.nn.Linear) or name == "lm_head":
                continue
            w = torch.randn(child.out_features, child.in_features, dtype=torch.bfloat16, device=device,
                            generator=gen) * 0.02
            if mode == "nf4":
                import bitsandbytes as bnb

                new = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=False,
                                        compute_dtype=torch.bfloat16, quant_type="nf4", device="meta")
                new.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4").to(device)
            elif mode == "int4":  # the product's int4 format (nla_tui/core/models/int4.py)
                from nla_tui.core.models.int4 import Int4Linear

                lin = torch.nn.Linear(child.in_features, child.out_features, bias=False, device="meta",
                                      dtype=torch.bfloat16)
                lin.weight = torch.nn.Parameter(w, requires_grad=False)
                new = Int4Linear.from_linear(lin)
                del lin
            else:
                new = torch.nn.Linear(child.in_features, child.out_features, bias=False,
                                      device=device, dtype=torch.bfloat16)
                new.weight.data.copy_(w)
            del w
            setattr(mod, name, new)
    for name, p in list(model.named_parameters()):
        if p.device.type == "meta":
            owner, leaf = name.rsplit(".", 1)
            t = torch.randn(p.shape, dtype=torch.bfloat16, device=device, generator=gen) * 0.02 if p.dim() > 1 \
                else torch.zeros(p.shape, dtype=torch.bfloat16, device=device)
            setattr(model.get_submodule(owner), leaf, torch.nn.Parameter(t, requires_grad=False))
    for name, b in list(model.named_buffers()):
        if b.device.type == "meta":
            owner, leaf = name.rsplit(".", 1)
            model.get_submodule(owner).register_buffer(leaf, torch.zeros(b.shape, dtype=b.dtype, device=device),
                                                       persistent=False)
    for m in model.modules():  # rotary tables must be computed, not zeros
        if type(m).__name__.endswith("RotaryEmbedding"):
            m.__init__(config=cfg, device=device)
        if isinstance(getattr(m, "embed_scale", None), torch.Tensor):  # Gemma's √d, not zero
            m.embed_scale.fill_(cfg.hidden_size ** 0.5)
    model.tie_weights()
    model.config.use_cache = True
    if mode == "int4":
        from nla_tui.core.models.int4 import use_kernel

        model.config.nla_int4_kernel = use_kernel(model)
    return model.eval()


def value_head(d: int = 5376, device: str = "cuda") -> torch.nn.Linear:
    head = torch.nn.Linear(d, d, bias=False, device=device, dtype=torch.bfloat16)
    torch.nn.init.normal_(head.weight, std=0.02)
    return head.eval()
