"""`nla-tui check`: is this subject/AV/AR triple consistent? Configs, sidecars,
tokenizers, safetensors headers and the (small) AR value head — no model weights are
loaded, so it answers in seconds even for 70B. It must catch everything `run` would
trip on at load: each check here mirrors one made when the models load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ..errors import CheckpointError, NlaError
from ..models.loading import load_tokenizers, resolve_checkpoint
from ..models.weights_header import checkpoint_tensors, summarize
from ..options import EngineOptions
from .presets import resolve_sources
from .sidecar import find_injection_slot, read_sidecar, validate_ar, validate_av


def _text_cfg(cfg: dict) -> dict:
    inner = cfg.get("text_config")
    return inner if isinstance(inner, dict) else cfg


def _read_config(name: str, path: Path) -> dict:
    """config.json, parsed and understood by transformers (an unknown model_type is
    what `run` would fail on first)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..models.loading import is_multimodal

    f = path / "config.json"
    try:
        cfg = json.loads(f.read_text(encoding="utf-8"))
        if not isinstance(cfg, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"The {name}'s {f} is unreadable ({e}). Re-download the checkpoint.") from None
    try:
        config = AutoConfig.from_pretrained(str(path))
    except Exception as e:  # unknown model_type, bad field types: transformers raises many kinds
        raise CheckpointError(
            f"The {name}'s config.json (model_type {cfg.get('model_type')!r}) is not understood by this "
            f"transformers ({type(e).__name__}: {str(e)[:200]}). Upgrade transformers "
            f"(pip install -U transformers) or fix the config.") from None
    if not is_multimodal(config) and type(config) not in AutoModelForCausalLM._model_mapping:
        raise CheckpointError(f"The {name} has model_type {cfg.get('model_type')!r}, which is not a causal "
                              f"language model transformers can load. Point at the right checkpoint.")
    return _text_cfg(cfg)


def _check_weights(name: str, path: Path, cfg: dict, d_model: int) -> int:
    width, layers = summarize(checkpoint_tensors(path))
    if width is not None and width != d_model:
        raise CheckpointError(f"The {name}'s weights have embedding width {width} but d_model is {d_model}: "
                              f"the weights belong to another model.")
    n = cfg.get("num_hidden_layers")
    if layers and n is not None and layers != n:
        raise CheckpointError(f"The {name}'s weights hold {layers} decoder layers but its config.json says "
                              f"{n}: the weights and the config do not match.")
    return layers


def check_pair(opts: EngineOptions, say: Callable[[str], None]) -> bool:
    """Run every check, report each line; True when all pass. Problems the user must
    fix raise NlaError (exit 2) from the first failing step."""
    from .ar import read_value_head

    preset, sources = resolve_sources(opts)
    say(f"preset: {preset.name if preset else '(custom)'}")
    ck = {k: resolve_checkpoint(v) for k, v in sources.items()}
    for k, c in ck.items():
        # A hub id is worth resolving on screen; a directory given as itself is not.
        where = str(c.path) if Path(c.name).expanduser().resolve() == c.path.resolve() else f"{c.name}  ->  {c.path}"
        say(f"{k:8s} {where}  (revision {c.revision})")
    av_meta, ar_meta = read_sidecar(ck["av"].path), read_sidecar(ck["ar"].path)
    if av_meta.role != "av" or ar_meta.role != "ar":
        raise NlaError(f"--av points at a {av_meta.role} sidecar and --ar at a {ar_meta.role} sidecar; swap them.")
    if ar_meta.d_model != av_meta.d_model:
        raise NlaError(f"The AV's sidecar says d_model={av_meta.d_model} but the AR's says {ar_meta.d_model}: "
                       f"they are not one pair.")
    if None not in (av_meta.extraction_layer, ar_meta.extraction_layer) and \
            av_meta.extraction_layer != ar_meta.extraction_layer:
        raise NlaError(f"The AV says layer {av_meta.extraction_layer} but the AR says layer "
                       f"{ar_meta.extraction_layer}: not a pair.")
    say(f"ok  sidecars: AV d_model={av_meta.d_model} injection_scale={av_meta.injection_scale:g}; "
        f"AR layer K={ar_meta.extraction_layer} mse_scale={ar_meta.mse_scale:.3f}")
    cfgs = {k: _read_config(label, ck[k].path) for k, label in
            (("subject", "subject"), ("av", "AV"), ("ar", "AR"))}
    for key, label in (("subject", "subject"), ("av", "AV"), ("ar", "AR")):
        if cfgs[key].get("hidden_size") != av_meta.d_model:
            raise NlaError(f"The {label}'s hidden_size is {cfgs[key].get('hidden_size')} but the sidecar says "
                           f"d_model={av_meta.d_model}: these checkpoints are not one family.")
    say(f"ok  hidden sizes match d_model={av_meta.d_model}; transformers knows all three model types")
    for key, label in (("subject", "subject"), ("av", "AV"), ("ar", "AR")):
        _check_weights(label, ck[key].path, cfgs[key], av_meta.d_model)
    say("ok  safetensors headers: complete files, embedding widths and layer counts match the configs")
    read_value_head(ck["ar"].path, ar_meta.d_model)
    say(f"ok  value_head.safetensors: one finite ({ar_meta.d_model}, {ar_meta.d_model}) weight")
    av_cfg, ar_cfg, subj_cfg = cfgs["av"], cfgs["ar"], cfgs["subject"]
    toks = load_tokenizers({"av": ck["av"], "ar": ck["ar"]})  # one load when their files are the same
    av_tok = toks["av"]
    ids = validate_av(av_meta, av_tok, av_cfg.get("hidden_size"))
    slot = find_injection_slot(av_meta, ids)
    say(f"ok  AV prompt: {len(ids)} tokens, one injection slot at {slot} "
        f"(neighbours {av_meta.left_neighbor_id}/{av_meta.right_neighbor_id})")
    ar_tok = toks["ar"]
    validate_ar(ar_meta, ar_tok, ar_cfg.get("num_hidden_layers"))
    say(f"ok  AR: {ar_cfg.get('num_hidden_layers')} layers = K+1, <bos> added, prompt suffix matches")
    k = opts.layer if opts.layer is not None else ar_meta.extraction_layer
    if opts.layer is not None and ar_meta.extraction_layer is not None and opts.layer != ar_meta.extraction_layer:
        raise NlaError(f"--layer {opts.layer} does not match the AR, which reconstructs layer "
                       f"{ar_meta.extraction_layer}.")
    n = subj_cfg.get("num_hidden_layers")
    if k is not None and n is not None and not 0 <= k < n:
        raise NlaError(f"Layer K={k} does not exist in the subject ({n} layers).")
    say(f"ok  subject has {n} layers; capturing layer {k}")
    say("pair is consistent")
    return True
