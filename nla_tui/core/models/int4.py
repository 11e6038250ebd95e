"""4-bit weights with a faster batch-1 matmul than bitsandbytes' nf4 (quant "int4").

Format (FORMAT, what the pre-quantised cache stores and its key names): asymmetric integer
4-bit, one bf16 scale and zero per GROUP inputs, W ≈ (q − zero) · scale (HQQ's convention),
q packed two to a byte (low nibble = even input). Quantised from the checkpoint's weights with
HQQ's zero-point refinement (`quantize`).

Kernels (`kernel()` picks, once per process):
- "gemlite": gemlite's A16W4 Triton kernels (a batch-1 GEMV with reversed split-K, split-K and
  plain GEMMs for larger batches) on a CUDA card with Triton. The layer hands its weights to
  gemlite's own packed layout on the card; the bytes stay 4-bit (~0.53 byte per weight).
- "torch": dequantise to the activation dtype, then F.linear. Runs anywhere (CPU, a GPU without
  Triton or gemlite) and computes the same function; it is the reference the tests compare to.

Why gemlite: on one H100, summed over the 7 linear shapes of Gemma-3-27B × 62 layers in CUDA
graphs, batch 1 / 8 / 64: bitsandbytes nf4 13.4 / 40.9 / 53.4 ms, gemlite A16W4 9.1 / 21.6 /
33.9 ms, torch's int4 tinygemm 8.5 / 19.6 / 115 ms (issue 24's probe; bench/kernels.py). Only
gemlite is faster than bitsandbytes at every batch size fast_decode uses.
"""

from __future__ import annotations

import json
import logging
import os

import torch
import torch.nn.functional as F

GROUP = 64
FORMAT = f"int4-asym-g{GROUP}-bf16sz-hqq-v1"
# Linear layers left in the compute dtype, as the nf4 recipe leaves them (loading._quant_kwargs).
SKIP = ("lm_head", "multi_modal_projector", "vision_tower")
_log = logging.getLogger(__name__)


def quantize(w: torch.Tensor, group: int = GROUP, iters: int = 20) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(packed uint8 [n, k/2], scale [n, k/group], zero [n, k/group]) for a [n, k] weight.

    The step is each group's (max − min) / 15; the zero is then refined as HQQ does (a few
    proximal steps of an lp-norm (p < 1) fit, which lets a few outliers stay wrong instead of
    stretching every other weight's error): on the demo AV this halves plain rounding's error."""
    n, k = w.shape
    if k % group or k % 2:
        raise ValueError(f"int4: {k} inputs is not a multiple of the group size {group}")
    wg = w.float().reshape(n, k // group, group)
    lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
    inv = 15 / (hi - lo).clamp(min=1e-8)  # quantisation steps per unit
    zero = -lo * inv
    beta, best = 10.0, float("inf")
    for _ in range(iters):  # HQQ's optimize_weights_proximal (lp_norm 0.7, beta 10, kappa 1.01)
        q = (wg * inv + zero).round().clamp(0, 15)
        err = wg - (q - zero) / inv
        e = err.abs().mean().item()
        if e >= best:
            break
        best, best_zero = e, zero
        shrunk = torch.sign(err) * torch.relu(err.abs() - (1 / beta) * err.abs().clamp(min=1e-12).pow(0.7 - 1))
        zero = (q - (wg - shrunk) * inv).mean(-1, keepdim=True)
        beta *= 1.01
    zero = best_zero if best < float("inf") else zero
    # Round with the bf16 scale and zero that are stored, so dequantising is what was rounded to.
    scale, zero = (1 / inv).to(torch.bfloat16), zero.to(torch.bfloat16)
    q = (wg / scale.float() + zero.float()).round().clamp(0, 15).to(torch.uint8).reshape(n, k)
    return q[:, 0::2] | (q[:, 1::2] << 4), scale[..., 0], zero[..., 0]


def unpack(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [n, k] values 0..15 from the packed [n, k/2]."""
    return torch.stack([packed & 15, packed >> 4], dim=-1).reshape(packed.shape[0], -1)


def dequantize(packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    q = unpack(packed).to(dtype)
    n, k = q.shape
    g = k // scale.shape[1]
    w = (q.reshape(n, -1, g) - zero.to(dtype)[..., None]) * scale.to(dtype)[..., None]
    return w.reshape(n, k)


_KERNEL: list[tuple[str, str]] = []


def kernel() -> tuple[str, str]:
    """("gemlite" | "torch", why). NLA_TUI_INT4_KERNEL=torch forces the portable path."""
    if _KERNEL:
        return _KERNEL[0]
    want = os.environ.get("NLA_TUI_INT4_KERNEL", "auto")
    if want == "torch":
        got = ("torch", "NLA_TUI_INT4_KERNEL=torch")
    elif not torch.cuda.is_available():
        got = ("torch", "no CUDA device")
    else:
        try:
            import triton  # noqa: F401
            import gemlite  # noqa: F401
            from gemlite.helper import A16W4_HQQ_INT  # noqa: F401
            got = ("gemlite", f"gemlite {gemlite.__version__}, triton {triton.__version__}")
        except Exception as e:  # ImportError, or a Triton that cannot start on this machine
            got = ("torch", f"gemlite/Triton unavailable ({type(e).__name__}: {str(e)[:120]})")
    _KERNEL.append(got)
    return got


class Int4Linear(torch.nn.Module):
    """A Linear whose weight is stored in FORMAT. Parameters (moved by parking like any other):
    `packed`, `scale`, `zero` for the portable path; after `to_gemlite`, gemlite's own packed
    tensors inside `gl` instead (the portable ones are dropped: one 4-bit copy on the card)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, group: int = GROUP,
                 device=None, dtype=torch.bfloat16):
        super().__init__()
        self.in_features, self.out_features, self.group = in_features, out_features, group
        self.compute_dtype = dtype
        p = lambda *shape, dt: torch.nn.Parameter(torch.empty(*shape, dtype=dt, device=device), requires_grad=False)
        self.packed = p(out_features, in_features // 2, dt=torch.uint8)
        self.scale = p(out_features, in_features // group, dt=torch.bfloat16)
        self.zero = p(out_features, in_features // group, dt=torch.bfloat16)
        self.bias = p(out_features, dt=dtype) if bias else None
        self.gl = None

    @classmethod
    def from_linear(cls, lin: torch.nn.Linear, group: int = GROUP, device=None) -> "Int4Linear":
        dev = device if device is not None else lin.weight.device
        w = lin.weight.data.to(dev)
        out = cls(lin.in_features, lin.out_features, lin.bias is not None, group, "meta", lin.weight.dtype)
        packed, scale, zero = quantize(w, group)
        out.packed = torch.nn.Parameter(packed, requires_grad=False)
        out.scale = torch.nn.Parameter(scale, requires_grad=False)
        out.zero = torch.nn.Parameter(zero, requires_grad=False)
        if lin.bias is not None:
            out.bias = torch.nn.Parameter(lin.bias.data.to(dev), requires_grad=False)
        return out

    def to_gemlite(self) -> None:
        """Hand the weights to gemlite's kernels (on the card they are on)."""
        from gemlite.helper import A16W4_HQQ_INT

        dev = self.packed.device
        q = unpack(self.packed.data)  # transient [n, k] uint8; gemlite packs it its own way
        gl = A16W4_HQQ_INT(device=str(dev), dtype=self.compute_dtype).from_weights(
            q, self.scale.data.to(self.compute_dtype), self.zero.data.to(self.compute_dtype),
            bias=None if self.bias is None else self.bias.data)
        del q
        self.gl = gl
        self.packed = self.scale = self.zero = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gl is not None:
            shape = x.shape
            y = self.gl(x.reshape(-1, shape[-1]).to(self.compute_dtype))
            return y.reshape(*shape[:-1], self.out_features).to(x.dtype)
        w = dequantize(self.packed, self.scale, self.zero, x.dtype)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, group={self.group}, "
                f"kernel={'gemlite' if self.gl is not None else 'torch'}")


def _targets(model) -> list[tuple[torch.nn.Module, str, torch.nn.Linear]]:
    out = []
    for name, mod in model.named_modules():
        for child_name, child in mod.named_children():
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, torch.nn.Linear) and not any(s in full for s in SKIP) \
                    and child.in_features % GROUP == 0:
                out.append((mod, child_name, child))
    return out


@torch.no_grad()
def quantize_model(model, device: torch.device | str | None = None) -> int:
    """Replace every decoder Linear by an Int4Linear in place, one layer at a time (quantised on
    `device`, default where the weight is). Returns the number replaced."""
    n = 0
    for parent, name, lin in _targets(model):
        setattr(parent, name, Int4Linear.from_linear(lin, device=device))
        del lin
        n += 1
    if n:
        model.config.nla_int4 = {"format": FORMAT}
    return n


@torch.no_grad()
def use_kernel(model) -> str:
    """Move every Int4Linear of `model` on a CUDA card onto the fast kernel when this machine
    has it; otherwise leave them on the portable path. Returns the kernel used."""
    name, why = kernel()
    layers = [m for m in model.modules() if isinstance(m, Int4Linear) and m.gl is None]
    if name == "gemlite" and layers and layers[0].packed.device.type == "cuda":
        try:
            for m in layers:
                m.to_gemlite()
        except Exception as e:  # a Triton that cannot compile here: the portable path still works
            _log.warning("int4: gemlite could not take the weights (%s); using the portable kernel", e)
            _KERNEL[:] = [("torch", f"gemlite failed: {type(e).__name__}")]
            if any(m.gl is not None for m in layers):
                raise  # half converted: never leave a model like that silently
            return "torch"
        return "gemlite"
    if layers:
        _log.info("int4: portable kernel (%s)", why)
    return "torch"


def single_device(device_map, device: str, name: str) -> torch.device:
    """The one device an int4 model goes to (a model split across cards is nf4's job)."""
    if isinstance(device_map, dict) and len(set(map(str, device_map.values()))) == 1:
        return torch.device(next(iter(device_map.values())) if device_map else device)
    if device_map is None:
        return torch.device(device)
    from ..errors import NlaError

    raise NlaError(f"{name} does not fit on one card in int4, and int4 keeps each model on one card. "
                   f"Load it with --quant nf4 (bitsandbytes splits a model across cards), or free a card.")


# The pre-quantised cache (quant_cache.py) stores int4 models in this format: every parameter
# and buffer (non-persistent ones too: rotary tables, Gemma's embedding scale) by its module path,
# a tensor shared by several paths (tied embeddings) once, plus config.json. Loading builds the
# model on the meta device and assigns the tensors, so nothing is initialised or quantised again.
SHARD_BYTES = 4 << 30


def save_quantised(model, directory: str) -> None:
    from safetensors.torch import save_file

    model.config.save_pretrained(directory)
    tensors: dict[str, tuple[str, torch.Tensor]] = {}
    aliases: dict[str, str] = {}
    first: dict[tuple, str] = {}
    for kind, items in (("p", model.named_parameters(remove_duplicate=False)),
                        ("b", model.named_buffers(remove_duplicate=False))):
        for name, t in items:
            if t is None:
                continue
            ident = (t.data_ptr(), t.dtype, tuple(t.shape), t.device)
            if t.numel() and ident in first:
                aliases[name] = first[ident]
                continue
            first[ident] = name
            tensors[name] = (kind, t)
    shard: dict[str, torch.Tensor] = {}
    size, index, kinds = 0, 0, {}

    def flush():
        nonlocal shard, size, index
        if shard:
            index += 1
            meta = {"format": FORMAT, "kinds": json.dumps({k: kinds[k] for k in shard})}
            save_file(shard, os.path.join(directory, f"int4-{index:05d}.safetensors"), metadata=meta)
        shard, size = {}, 0
    for name, (kind, t) in tensors.items():
        kinds[name] = kind
        shard[name] = t.detach().to("cpu").contiguous()
        size += t.numel() * t.element_size()
        if size >= SHARD_BYTES:
            flush()
    flush()
    with open(os.path.join(directory, "int4-aliases.json"), "w", encoding="utf-8") as fh:
        json.dump({"format": FORMAT, "aliases": aliases}, fh)


@torch.no_grad()
def load_quantised(cls, directory: str, device: torch.device, dtype: torch.dtype):
    """An int4 model from `save_quantised` output, on `device` (portable kernel until use_kernel)."""
    from safetensors import safe_open
    from transformers import AutoConfig

    with open(os.path.join(directory, "int4-aliases.json"), encoding="utf-8") as fh:
        info = json.load(fh)
    if info.get("format") != FORMAT:
        raise ValueError(f"int4 cache entry has format {info.get('format')!r}, expected {FORMAT!r}")
    config = AutoConfig.from_pretrained(directory)
    with torch.device("meta"):  # Auto classes build through from_config, model classes directly
        model = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
    model.to(dtype)
    for parent, name, lin in _targets(model):
        setattr(parent, name, Int4Linear(lin.in_features, lin.out_features, lin.bias is not None,
                                         device="meta", dtype=dtype))
    loaded: dict[str, torch.Tensor] = {}
    files = sorted(f for f in os.listdir(directory) if f.startswith("int4-") and f.endswith(".safetensors"))
    for f in files:
        with safe_open(os.path.join(directory, f), framework="pt", device=str(device)) as sf:
            kinds = json.loads(sf.metadata()["kinds"])
            for key in sf.keys():
                t = sf.get_tensor(key)
                loaded[key] = torch.nn.Parameter(t, requires_grad=False) if kinds[key] == "p" else t
    for alias, key in info["aliases"].items():
        loaded[alias] = loaded[key]
    for name, t in loaded.items():
        owner, _, leaf = name.rpartition(".")
        mod = model.get_submodule(owner) if owner else model
        slot = mod._parameters if leaf in mod._parameters else mod._buffers
        if leaf not in slot:
            raise ValueError(f"int4 cache entry has {name}, which the model does not")
        slot[leaf] = t
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.device.type == "meta"]
    if left:
        raise ValueError(f"int4 cache entry lacks {len(left)} tensors (first: {left[0]})")
    return model
