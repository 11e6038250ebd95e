"""Reading vectors from files a researcher brings: .npy, .safetensors, and the decoder of
a sparse autoencoder saved by sae-lens. numpy + safetensors only (no torch: the UI checks
a path the moment it is typed; the CLI before any model loads). Nothing is unpickled:
.npy goes through np.load(allow_pickle=False).

    read_array(path, name)                      # any numeric array (explain-vectors)
    steering_file(path, name, d_model)          # one finite float vector [d_model]
    sae_feature(directory, feature, d_model, layer)  # W_dec[feature], layer checked
    check_source(source, d_model, layer, n_tokens)   # any steering source, before a model loads

Every refusal is an InputError saying what is wrong and how to fix it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from ..errors import InputError, brief
from ..steer_sources import (MEDIAN_NORM, FileVector, ResolvedVector, SaeFeature, TextReading, TokenDifference,
                             VectorSource, median_norm, token_difference)

SUFFIXES = (".npy", ".safetensors")
SAE_CONFIG, SAE_WEIGHTS = "cfg.json", "sae_weights.safetensors"
# sae-lens hook names: "blocks.12.hook_resid_post" (TransformerLens) or an HF module path
# ("model.layers.12", "model.language_model.layers.12"), whose output is the residual after block 12.
_TL_HOOK = re.compile(r"blocks\.(\d+)\.hook_resid_(pre|post|mid)$")
_HF_HOOK = re.compile(r"(?:^|\.)layers\.(\d+)$")


def read_array(path: str | os.PathLike, name: str | None = None) -> np.ndarray:
    """The array in a .npy file, or tensor `name` of a .safetensors file (optional when
    it holds exactly one), as stored (any dtype numpy reads)."""
    p = Path(path).expanduser()
    if p.suffix not in SUFFIXES:
        raise InputError(f"{p} is neither .npy nor .safetensors: save the vectors with numpy.save or "
                         f"safetensors (one row per vector, width d_model).")
    if not p.is_file():
        raise InputError(f"Vector file {p} does not exist.")
    if p.suffix == ".npy":
        if name is not None:
            raise InputError(f"--name picks a tensor in a .safetensors file; {p} is a .npy file with one array.")
        try:
            with open(p, "rb") as fh:
                magic = fh.read(6)
        except OSError as e:
            raise InputError(f"{p} is not readable ({e.strerror or e}).") from None
        if magic != b"\x93NUMPY":  # numpy would try it as a pickle; say what it is instead
            raise InputError(f"{p} is not a .npy file (no NumPy header): save the vector with "
                             f"numpy.save(path, array.astype('float32')).")
        try:
            return np.load(p, allow_pickle=False)
        except ValueError as e:  # object arrays need pickle, which nla-tui never unpickles
            raise InputError(f"{p} cannot be read without unpickling ({e}); save a plain float array "
                             f"(numpy.save(path, array.astype('float32'))).") from None
        except (OSError, EOFError) as e:  # EOFError: an empty or truncated file
            raise InputError(f"{p} is not a readable .npy file ({e}).") from None
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="numpy") as f:
            keys = list(f.keys())
            if name is None:
                if len(keys) != 1:
                    raise InputError(f"{p} holds {len(keys)} tensors ({', '.join(sorted(keys)) or 'none'}); "
                                     f"pick one with --name KEY.")
                name = keys[0]
            if name not in keys:
                raise InputError(f"{p} has no tensor {name!r}; it holds {', '.join(sorted(keys))}.")
            return _tensor(f, name, p)
    except InputError:
        raise
    except Exception as e:  # safetensors raises its own error types for a bad header
        raise InputError(f"{p} is not a readable safetensors file ({e}).") from None


def _tensor(f, name: str, p: Path, row: int | None = None) -> np.ndarray:
    """Tensor `name` (or one row of it) from an open safetensors file; bf16 named plainly."""
    part = f.get_slice(name)
    if part.get_dtype() == "BF16":  # numpy has no bfloat16
        raise InputError(f"{p}: tensor {name!r} is bfloat16, which cannot be read without torch; save it as "
                         f"float32 (tensor.float()) and try again.")
    return part[row] if row is not None else part[:]


def steering_file(source: FileVector, d_model: int) -> ResolvedVector:
    """One steering vector from a file: a [d_model] or [1, d_model] float array, finite
    and non-zero. alpha's unit (the layer's median norm) is filled in by the caller."""
    p = Path(source.path).expanduser()
    arr = read_array(p, source.name)
    if arr.dtype.kind != "f":
        raise InputError(f"{p} holds {arr.dtype} data; a steering vector must be floating point "
                         f"(save it with .astype('float32')).")
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1:
        raise InputError(f"{p} holds an array of shape {tuple(arr.shape)}; a steering vector is one row "
                         f"[{d_model}]. Save the row you mean (e.g. W_dec[i]), or use --sae DIR --feature N "
                         f"for a sparse autoencoder's decoder.")
    return ResolvedVector(check_direction(arr, d_model, str(p)), source.describe(), "", 0.0)


def check_direction(vector: np.ndarray, d_model: int, what: str) -> np.ndarray:
    """float32 [d_model], finite, non-zero; else an InputError naming `what`."""
    v = np.asarray(vector)
    if v.size == 0:
        raise InputError(f"{what} is empty: a steering vector has d_model={d_model} numbers.")
    if v.shape != (d_model,):
        raise InputError(f"{what} has {v.size} numbers (shape {tuple(v.shape)}) but this model's layer has "
                         f"d_model={d_model}: it was made for another model (or another layer's width).")
    if not np.isfinite(v).all():
        bad = int((~np.isfinite(v)).sum())
        raise InputError(f"{what} holds {bad} NaN or infinite value(s); a steering vector must be finite. "
                         f"Check how it was computed (a division by zero, an overflow in float16).")
    out = v.astype(np.float32)
    if not np.isfinite(out).all():
        raise InputError(f"{what} overflows float32; rescale it (only its direction matters: alpha sets the size).")
    if not np.any(out):
        raise InputError(f"{what} is all zeros: it has no direction to steer in.")
    return out


def sae_layer(cfg: dict) -> int | None:
    """The layer K (residual after block K) an sae-lens cfg.json says its SAE reads;
    None when it does not say in a form known here."""
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    hook = cfg.get("hook_name", meta.get("hook_name"))
    if isinstance(hook, str):
        if m := _TL_HOOK.search(hook):
            block, where = int(m.group(1)), m.group(2)
            # resid_pre of block L is the output of block L − 1; resid_mid is inside a block (not any K).
            return block if where == "post" else block - 1 if where == "pre" else None
        if m := _HF_HOOK.search(hook):
            return int(m.group(1))
    layer = cfg.get("hook_layer", meta.get("hook_layer"))
    return layer if isinstance(layer, int) and not isinstance(layer, bool) else None


def read_sae_config(directory: Path) -> dict:
    """cfg.json of an sae-lens SAE directory, with d_in and d_sae checked."""
    cpath = directory / SAE_CONFIG
    if not directory.is_dir():
        raise InputError(f"SAE directory {directory} does not exist: give the folder sae-lens saved "
                         f"(it holds {SAE_CONFIG} and {SAE_WEIGHTS}).")
    if not cpath.is_file():
        raise InputError(f"{directory} has no {SAE_CONFIG}: it is not an SAE saved by sae-lens "
                         f"(sae.save_model(DIR) writes {SAE_CONFIG} and {SAE_WEIGHTS}).")
    try:
        cfg = json.loads(cpath.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{cpath} is not readable JSON ({e}).") from None
    if not isinstance(cfg, dict):
        raise InputError(f"{cpath} is not a JSON object.")
    for key in ("d_in", "d_sae"):
        v = cfg.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise InputError(f"{cpath}: {key} must be a positive whole number, got {brief(v)}.")
    return cfg


def sae_feature(source: SaeFeature, d_model: int, layer: int) -> ResolvedVector:
    """Decoder row W_dec[feature] of the SAE in `source.directory`, checked against the
    model (d_in = d_model) and the NLA's layer K. An SAE of another layer is refused
    unless `source.any_layer` (its directions describe another layer's residual, so
    adding one at K is rarely what was meant); an SAE whose layer cfg.json does not name
    is steered with a warning."""
    directory = Path(source.directory).expanduser()
    cfg = read_sae_config(directory)
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    what = f"SAE {directory}"
    if d_in != d_model:
        raise InputError(f"{what} reads vectors of d_in={d_in}, but this model's layer has d_model={d_model}: "
                         f"it was trained on another model.")
    feature = source.feature
    if isinstance(feature, bool) or not isinstance(feature, int) or not 0 <= feature < d_sae:
        raise InputError(f"--feature {feature} is out of range: {what} has d_sae={d_sae} features "
                         f"(0..{d_sae - 1}).")
    warnings: list[str] = []
    sae_k = sae_layer(cfg)
    if sae_k is None:
        warnings.append(f"{SAE_CONFIG} does not say which layer the SAE reads (hook_name); it is steered at "
                        f"layer {layer} as if it were that layer's")
    elif sae_k != layer and not source.any_layer:
        raise InputError(f"{what} reads layer {sae_k} (hook {cfg.get('hook_name')!r}), but steering and the NLA "
                         f"act on layer {layer}: its feature directions describe another layer's residual. Use an "
                         f"SAE trained on layer {layer}, or pass --any-layer to steer with it anyway.")
    elif sae_k != layer:
        warnings.append(f"the SAE reads layer {sae_k}; steered at layer {layer} anyway (--any-layer)")
    wpath = directory / SAE_WEIGHTS
    if not wpath.is_file():
        raise InputError(f"{directory} has no {SAE_WEIGHTS}: the SAE's weights are missing.")
    from safetensors import safe_open

    try:
        with safe_open(str(wpath), framework="numpy") as f:
            if "W_dec" not in f.keys():
                raise InputError(f"{wpath} has no W_dec tensor (it holds {', '.join(sorted(f.keys()))}); "
                                 f"sae-lens saves the decoder as W_dec [d_sae, d_in].")
            shape = tuple(f.get_slice("W_dec").get_shape())
            if shape != (d_sae, d_in):
                raise InputError(f"{wpath}: W_dec has shape {shape}, but {SAE_CONFIG} says "
                                 f"[d_sae={d_sae}, d_in={d_in}]. The folder mixes two SAEs.")
            row = _tensor(f, "W_dec", wpath, feature)  # one row read, not the whole decoder
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{wpath} is not a readable safetensors file ({e}).") from None
    if row.dtype.kind != "f":
        raise InputError(f"{wpath}: W_dec holds {row.dtype} data; an SAE decoder is floating point.")
    vec = check_direction(row, d_model, f"{what} feature {feature}")
    return ResolvedVector(vec, source.describe(), "", 0.0, layer=sae_k, warnings=warnings)


def check_source(source: VectorSource, d_model: int, layer: int, n_tokens: int,
                 activations: np.ndarray | None = None) -> ResolvedVector | None:
    """Everything about a steering source that can be checked without a model, before any
    loads (the CLI, the TUI's dialog, the API): a file or SAE row is read and validated
    against d_model (and an SAE's layer against `layer`); a − b's tokens are in range (and,
    given the activations, not the same vector). Returns the vector when it is known now,
    alpha's unit (the layer's median norm) filled in when the activations are given; a
    text reading needs the AR, so it returns None."""
    if isinstance(source, TextReading):
        if not source.edited or not source.edited.strip():
            raise InputError("The edited explanation is empty: write what the model should have thought "
                             "(e.g. the original explanation with one concept changed).")
        if not 0 <= source.index < n_tokens:
            raise InputError(f"--token {source.index} is out of range: the conversation has {n_tokens} tokens "
                             f"(0..{n_tokens - 1}).")
        return None
    if isinstance(source, TokenDifference):
        for what, i in (("a", source.a), ("b", source.b)):
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n_tokens:
                raise InputError(f"--diff: token {what} = {i} is out of range: the conversation has {n_tokens} "
                                 f"tokens (0..{n_tokens - 1}).")
        if source.a == source.b:
            raise InputError(f"--diff {source.a},{source.b}: a − b of a token with itself is the zero vector; "
                             f"pick two different tokens.")
        return None if activations is None else token_difference(activations, source)
    if isinstance(source, FileVector):
        resolved = steering_file(source, d_model)
    elif isinstance(source, SaeFeature):
        resolved = sae_feature(source, d_model, layer)
    else:
        raise InputError(f"Unknown steering source {type(source).__name__}.")
    if activations is not None:
        resolved.unit, resolved.unit_norm = MEDIAN_NORM, median_norm(activations)
    return resolved
