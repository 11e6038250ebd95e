"""The pair being trained: the product's own Verbalizer and Reconstructor with LoRA.

Both come from `Engine.load()` on NLA-format directories (the untrained demo layout),
so injection (template, char, scale, √d) and scoring (AR template with <bos>, last
token, value head, norm → identity) are the product's code, not a copy of it. peft
wraps the linear layers in place; the AR's value head trains in full.
"""

from __future__ import annotations

import torch

from nla_tui.core.models import fast_decode

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def add_lora(model, r: int, alpha: int):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=TARGETS, bias="none")
    peft_model = get_peft_model(model, cfg)  # replaces modules inside `model` in place
    return peft_model


def lora_params(model) -> list[torch.nn.Parameter]:
    return [p for n, p in model.named_parameters() if "lora_" in n]


def freeze_all_but_lora(model) -> None:
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)


def export_lora(model, prefix: str) -> dict[str, torch.Tensor]:
    """{prefix + module path (as in the plain model) + .lora_A|.lora_B: tensor}."""
    out = {}
    for n, p in model.named_parameters():
        if "lora_A" not in n and "lora_B" not in n:
            continue
        # base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight
        name = n.split("base_model.model.", 1)[-1] if n.startswith("base_model.model.") else n
        mod, kind = name.split(".lora_")
        out[f"{prefix}{mod}.lora_{kind[0]}"] = p.detach().to(torch.bfloat16).cpu().contiguous()
    return out


def policy_changed(model) -> None:
    """fast_decode keeps the KV of the template prefix per model: stale once the
    weights move, so drop it after every update (captured graphs read the weights in
    place and stay valid)."""
    fast_decode._PREFIXES.pop(model, None)


def structure_changed(model) -> None:
    """Modules were replaced (LoRA added): captured CUDA graphs replay the old kernels."""
    fast_decode.clear(model)
