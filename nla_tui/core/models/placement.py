"""Where the subject, AV and AR live: one card each, shared cards, or split across cards.

Pure arithmetic over byte counts so it can be tested without GPUs; torch is imported
only inside `gpu_free_memory`. See docs/MULTI_GPU.md for the rules and what is unverified.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from nla_tui.core.errors import InputError, NlaError

ROLES = ("subject", "av", "ar")
GIB = 1024**3
QUANTS = ("nf4", "int4", "int8", "bf16", "fp32")
# bitsandbytes quantizers multiply max_memory by 0.9 (transformers quantizer_bnb_*.adjust_max_memory);
# device_map_for divides it back out so the planned split still holds the whole model.
_BNB_MAX_MEMORY_FACTOR = 0.9
# nf4 with double quantisation (what the first measured figures, BENCHMARKS.md, match): 4-bit weights, an 8-bit
# absmax per 64-weight block, and an fp32 absmax per 256 blocks.
_BYTES_PER_PARAM = {"nf4": 0.5 + 1 / 64 + 4 / (64 * 256), "int4": 0.5 + 4 / 64, "int8": 1.0, "bf16": 2.0,
                    "fp32": 4.0}  # int4: bf16 scale + zero per 64 (int4.py)
# Activations, allocator fragmentation and sampling buffers on top of the KV cache, plus fp32
# last-token logits (and a softmax copy) per sequence. Fitted to the eager baseline's nf4 peaks (BENCHMARKS.md) at batch 64
# and 160 (which exceed weights + KV by ~0.4 and ~0.8 GiB), with a margin for their rounding.
ACTIVATION_SLACK = 640 * 2**20
# Tokens each role keeps in its KV cache: the subject holds the conversation, the AV a short
# prompt plus the explanation, the AR only reads an explanation once (no cache, just activations).
ROLE_CONTEXT_TOKENS = {"subject": 4096, "av": 1024, "ar": 512}
_DEVICES_FORM = "--devices takes ROLE=DEVICE pairs, e.g. subject=0,av=1,ar=cpu (roles: subject, av, ar; devices: an index, cuda:N, cpu or auto)"


def parse_devices(spec: str) -> dict[str, str]:
    """`subject=0,av=cuda:1,ar=cpu` -> {"subject": "cuda:0", "av": "cuda:1", "ar": "cpu"}; "auto" stays "auto"."""
    out: dict[str, str] = {}
    if spec.strip().lower() in ("", "auto"):
        return out
    for part in spec.split(","):
        role, eq, value = (s.strip().lower() for s in part.partition("="))
        if not eq or not role or not value:
            raise InputError(f"Cannot read {part.strip()!r}. {_DEVICES_FORM}.")
        if role not in ROLES:
            raise InputError(f"Unknown model {role!r} in --devices. {_DEVICES_FORM}.")
        if role in out:
            raise InputError(f"{role} is given twice in --devices. {_DEVICES_FORM}.")
        if value in ("cpu", "auto"):
            out[role] = value
        elif m := re.fullmatch(r"(?:cuda:)?(\d+)", value):
            out[role] = f"cuda:{int(m.group(1))}"
        else:
            raise InputError(f"Bad device {value!r} for {role}. {_DEVICES_FORM}.")
    return out


def _cfg(config_like: Any, key: str, default: Any = None) -> Any:
    # Gemma 3 checkpoints keep the language model's shape under text_config.
    for source in (config_like, _get(config_like, "text_config")):
        value = _get(source, key)
        if value is not None:
            return value
    return default


def _get(obj: Any, key: str) -> Any:
    if obj is None:
        return None
    return obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)


def _vision_params(config_like: Any) -> int:
    """SigLIP tower + projector of a Gemma 3 multimodal checkpoint (0 for text-only configs).
    loading.py keeps both unquantised (llm_int8_skip_modules), so they cost plain bytes."""
    v = _get(config_like, "vision_config")
    if v is None:
        return 0
    h, i, n = int(_get(v, "hidden_size")), int(_get(v, "intermediate_size")), int(_get(v, "num_hidden_layers"))
    p, img = int(_get(v, "patch_size")), int(_get(v, "image_size"))
    layer = 4 * h * h + 2 * h * i + 9 * h + i  # q,k,v,o + fc1,fc2 with biases, two layer norms
    head = layer if _get(v, "vision_use_head") in (True, None) else 0  # SigLIP's default has a pooling head
    text_h = int(_cfg(config_like, "hidden_size"))
    return n * layer + head + 3 * p * p * h + h + (img // p) ** 2 * h + 2 * h + h * text_h + h


@dataclass(frozen=True)
class ModelSize:
    """Bytes for one model. `need` is what the plan reserves (weights + KV + slack); `accounted` is
    the weights as accelerate counts them (bitsandbytes reports 0.5 / 1 byte per quantised weight,
    without the absmax); `embed`, `layer` and `lm_head` (0 when tied) are the modules that
    accelerate places whole, which make a split need more than the model's bytes."""
    need: int
    weights: int
    accounted: int
    embed: int
    layer: int
    lm_head: int
    quant: str


def model_size(config_like: Any, quant: str, layers: int | None = None,
               context_tokens: int = 4096, batch: int = 1) -> ModelSize:
    """Estimate from the config: bitsandbytes quantises the decoder's linear layers only; the
    embedding (and an untied lm_head) and the norms stay in bf16 (fp32 when quant is fp32)."""
    if quant not in QUANTS:
        raise InputError(f"Unknown quant {quant!r}; use one of {', '.join(QUANTS)}.")
    hidden, inter = int(_cfg(config_like, "hidden_size")), int(_cfg(config_like, "intermediate_size"))
    heads = int(_cfg(config_like, "num_attention_heads"))
    kv_heads = int(_cfg(config_like, "num_key_value_heads", heads))
    head_dim = int(_cfg(config_like, "head_dim") or hidden // heads)
    n_layers = int(layers if layers is not None else _cfg(config_like, "num_hidden_layers"))
    vocab = int(_cfg(config_like, "vocab_size"))
    tied = bool(_cfg(config_like, "tie_word_embeddings", True))  # transformers' default
    q_out, kv_out = heads * head_dim, kv_heads * head_dim
    linear = hidden * (q_out + 2 * kv_out) + q_out * hidden + 3 * hidden * inter  # attn + gated MLP
    plain = 4 if quant == "fp32" else 2
    norms = plain * (6 * hidden + 2 * head_dim)  # Gemma 3 has 4 norms + q/k norms per layer
    scales = 4 * (q_out + 2 * kv_out + hidden + 2 * inter + hidden) if quant == "int8" else 0  # fp32 per row
    layer = int(linear * _BYTES_PER_PARAM[quant] + scales + norms)
    counted = {"nf4": 0.5, "int4": 0.5, "int8": 1.0}.get(quant, _BYTES_PER_PARAM[quant])
    embed = vocab * hidden * plain
    lm_head = 0 if tied else embed
    other = plain * (hidden + _vision_params(config_like))  # final norm, vision tower
    weights = n_layers * layer + embed + lm_head + other
    accounted = int(n_layers * (linear * counted + norms) + embed + lm_head + other)
    kv = 2 * n_layers * kv_out * context_tokens * batch * plain
    logits = 2 * 4 * vocab * batch
    return ModelSize(weights + kv + logits + ACTIVATION_SLACK, weights, accounted, embed, layer, lm_head, quant)


def role_sizes(configs: Mapping[str, Any], quants: Mapping[str, str],
               context_tokens: Mapping[str, int] | None = None) -> dict[str, ModelSize]:
    """Each model's ModelSize in its own precision, with its role's KV budget
    (ROLE_CONTEXT_TOKENS, or `context_tokens` where a caller knows better: a corpus sweep
    knows its longest conversation)."""
    tokens = {**ROLE_CONTEXT_TOKENS, **(context_tokens or {})}
    return {r: model_size(c, quants[r], context_tokens=tokens[r]) for r, c in configs.items()}


def estimate_weight_bytes(config_like: Any, quant: str, layers: int | None = None) -> int:
    return model_size(config_like, quant, layers).weights


def estimate_model_bytes(config_like: Any, quant: str, layers: int | None = None,
                         context_tokens: int = 4096, batch: int = 1) -> int:
    """Weights plus a bf16 KV cache for `context_tokens` x `batch`, last-token logits and ACTIVATION_SLACK."""
    return model_size(config_like, quant, layers, context_tokens, batch).need


@dataclass
class Placement:
    """role -> "cuda:N" / "cpu" (whole model) or {gpu_index: bytes} (split across those cards)."""
    entries: dict[str, str | dict[int, int]]
    needs: dict[str, int]
    warnings: list[str] = field(default_factory=list)
    sizes: dict[str, ModelSize] = field(default_factory=dict)

    def __getitem__(self, role: str) -> str | dict[int, int]:
        return self.entries[role]

    def label(self, role: str) -> str:
        entry = self.entries[role]
        if isinstance(entry, str):
            return entry
        return "cuda:" + "+".join(str(i) for i in sorted(entry))


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def _index(device: str) -> int:
    return int(device.split(":")[1])


def _too_big(need: dict[str, int], left: dict[str, int], quant: str | None) -> NlaError:
    parts = ", ".join(f"{r} {_gib(b)}" for r, b in need.items())
    cards = ", ".join(f"{d} {_gib(b)}" for d, b in left.items())
    hint = "load with --quant nf4, " if quant != "nf4" else ""
    return NlaError(f"The models need ~{_gib(sum(need.values()))} of GPU memory ({parts}) but only "
                    f"{_gib(sum(left.values()))} is free ({cards}). Free GPU memory, {hint}load fewer models, "
                    f"or put one on the CPU (slow) with --devices ar=cpu.")


def plan_placement(needs: Mapping[str, int | ModelSize], free: dict[str, int],
                   explicit: dict[str, str] | None = None, quant: str | None = None) -> Placement:
    """First-fit decreasing over cards in index order; a model no card holds is split over the
    cards with the most room left. `free` is gpu_free_memory(); empty means CPU only. Pass
    ModelSize values (model_size()) rather than plain ints so a split reserves what accelerate
    strands at card boundaries."""
    sizes = {r: n for r, n in needs.items() if isinstance(n, ModelSize)}
    need = {r: (n.need if isinstance(n, ModelSize) else int(n)) for r, n in needs.items()}
    quant = quant or next((s.quant for s in sizes.values()), None)
    explicit = dict(explicit or {})
    unknown = [r for r in list(need) + list(explicit) if r not in ROLES]
    if unknown:
        raise InputError(f"Unknown model {unknown[0]!r}. {_DEVICES_FORM}.")
    gpus = sorted(free, key=_index)
    left = {d: int(free[d]) for d in gpus}
    entries: dict[str, str | dict[int, int]] = {}
    warnings = [f"--devices names {r}, which is not being loaded; ignored." for r in explicit if r not in need]

    for role, device in explicit.items():
        if role not in need or device == "auto":
            continue
        if device != "cpu":
            if device not in left:
                seen = ", ".join(gpus) if gpus else "none"
                raise InputError(f"--devices puts {role} on {device}, but that GPU is not visible "
                                 f"({len(gpus)} visible: {seen}). Use a visible index, cpu or auto.")
            if need[role] > left[device]:
                raise InputError(f"--devices puts {role} on {device}, but it needs ~{_gib(need[role])} and "
                                 f"{device} has {_gib(left[device])} left. Use {role}=auto to let nla-tui "
                                 f"place or split it, or pick another device.")
            left[device] -= need[role]
        entries[role] = device

    todo = sorted((r for r in need if r not in entries), key=lambda r: -need[r])
    if todo and not gpus:
        entries.update({r: "cpu" for r in todo})  # no CUDA: everything runs on the CPU
        return Placement(entries, need, warnings, sizes)
    if sum(need[r] for r in todo) > sum(left.values()):
        raise _too_big({r: need[r] for r in todo}, left, quant)
    for role in todo:
        card = next((d for d in gpus if left[d] >= need[role]), None)
        if card is not None:
            entries[role] = card
            left[card] -= need[role]
            continue
        size = sizes.get(role)
        # accelerate keeps the largest remaining module free on the first card, each card boundary
        # can strand up to one decoder layer, and a card must hold at least the embedding.
        layer = size.layer if size else 0
        remaining = need[role] + (max(layer, size.lm_head) if size else 0)
        min_share = size.embed + 2 * layer if size else 1
        split: dict[int, int] = {}
        for d in sorted(gpus, key=lambda d: -left[d]):  # most room first: fewest cards
            if remaining <= 0 or left[d] < min_share:
                continue
            remaining += layer if split else 0
            take = min(left[d], max(remaining, min_share))
            split[_index(d)] = take
            left[d] -= take
            remaining -= take
        if remaining > 0:
            # Enough bytes in total, but not once a split's stranded layers are counted.
            raise _too_big({f"{role} split over cards": sum(split.values()) + remaining},
                           {d: left[d] + split.get(_index(d), 0) for d in gpus}, quant)
        entries[role] = dict(sorted(split.items()))
        warnings.append(f"{role} is split across {Placement(entries, {}).label(role)}; "
                        f"each step crosses cards, so it runs slower than on one card.")
    return Placement(entries, need, warnings, sizes)


def device_map_for(placement: Placement, role: str, quant: str | None = None) -> dict[str, Any]:
    """Keyword arguments for from_pretrained. A split uses device_map="sequential": "auto" means
    "balanced" in transformers, which re-divides max_memory evenly and can undo an uneven plan.
    With a ModelSize, each card's budget is cut to its share of the weights (the rest of its share
    is for the KV cache) and converted to the bytes accelerate counts."""
    entry = placement[role]
    if isinstance(entry, str):
        return {"device_map": {"": entry}}
    size = placement.sizes.get(role)
    quant = quant or (size.quant if size else "bf16")
    total = sum(entry.values())
    scale = 1.0
    if size:
        scale = (total - (size.need - size.weights)) / total * size.accounted / size.weights
    if quant in ("nf4", "int8"):
        scale /= _BNB_MAX_MEMORY_FACTOR
    return {"device_map": "sequential", "max_memory": {i: int(b * scale) for i, b in entry.items()}}


def gpu_free_memory() -> dict[str, int]:
    """Free bytes per visible CUDA device ({} without CUDA). Respects CUDA_VISIBLE_DEVICES."""
    try:
        import torch
    except ImportError:
        return {}
    if not torch.cuda.is_available():
        return {}
    return {f"cuda:{i}": capped_free(i) for i in range(torch.cuda.device_count())}


def capped_free(index: int) -> int:
    """Bytes a new allocation on card `index` can get: the driver's free memory plus what this
    process's caching allocator holds unused, within torch.cuda.set_per_process_memory_fraction
    when one is set (how the multi-GPU benchmark emulates 24 GB cards on larger ones)."""
    import torch

    free, total = torch.cuda.mem_get_info(index)
    reserved, allocated = torch.cuda.memory_reserved(index), torch.cuda.memory_allocated(index)
    avail = free + reserved - allocated
    get_fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    fraction = get_fraction(index) if get_fraction else 1.0
    if fraction < 1.0:
        avail = min(avail, int(total * fraction) - allocated)
    return int(max(0, avail))


def describe(placement: Placement, used_bytes: dict[str, int] | None = None) -> str:
    """Status-line text: "subject cuda:0 15.0G · av cuda:1 15.0G · ar cuda:0+1 11.0G".
    Measured bytes (model.get_memory_footprint()) when given, else the planned need marked "~"."""
    used_bytes = used_bytes or {}
    parts = []
    for role in [r for r in ROLES if r in placement.entries]:
        if role in used_bytes:
            size = f"{used_bytes[role] / GIB:.1f}G"
        else:
            size = f"~{placement.needs.get(role, 0) / GIB:.1f}G"
        parts.append(f"{role} {placement.label(role)} {size}")
    return " · ".join(parts)


# ---------------------------------------------------------------- a loaded model's devices


def layer_devices(model, n_layers: int, default: Any) -> list[Any]:
    """Device of each decoder layer (a model split over GPUs keeps each layer's KV beside it)."""
    inner = getattr(model, "model", model)
    inner = getattr(inner, "language_model", inner)
    layers = getattr(inner, "layers", None)
    if layers is None or len(layers) < n_layers:
        return [default] * n_layers
    out = []
    for layer in list(layers)[:n_layers]:
        p = next(layer.parameters(), None)
        out.append(default if p is None or p.device.type == "meta" else p.device)
    return out


def quant_state_to_device(model, device) -> None:
    """bitsandbytes keeps small quantisation tables that may sit on the CPU; a
    host-to-device copy inside graph capture is illegal, so move them first."""
    for mod in model.modules():
        qs = getattr(getattr(mod, "weight", None), "quant_state", None)
        if qs is not None and hasattr(qs, "to"):
            qs.to(device)
