"""`nla-tui check`: is this subject/AV/AR triple consistent? Tokenizers, configs and
sidecars only — no weights are loaded, so it answers in seconds even for 70B."""

from __future__ import annotations

from typing import Callable

from ..options import EngineOptions
from .presets import resolve_sources
from ..errors import NlaError
from ..models.loading import load_tokenizer, read_json, resolve_checkpoint
from .sidecar import find_injection_slot, read_sidecar, validate_ar, validate_av


def _text_cfg(cfg: dict) -> dict:
    return cfg.get("text_config", cfg)


def check_pair(opts: EngineOptions, say: Callable[[str], None]) -> bool:
    """Run every check, report each line; True when all pass. Problems the user must
    fix raise NlaError (exit 2) from the first failing step."""
    preset, sources = resolve_sources(opts)
    say(f"preset: {preset.name if preset else '(custom)'}")
    ck = {k: resolve_checkpoint(v) for k, v in sources.items()}
    for k, c in ck.items():
        say(f"{k:8s} {c.name}  ->  {c.path}  (revision {c.revision})")
    av_meta, ar_meta = read_sidecar(ck["av"].path), read_sidecar(ck["ar"].path)
    if av_meta.role != "av" or ar_meta.role != "ar":
        raise NlaError(f"--av points at a {av_meta.role} sidecar and --ar at a {ar_meta.role} sidecar; swap them.")
    say(f"ok  sidecars: AV d_model={av_meta.d_model} injection_scale={av_meta.injection_scale:g}; "
        f"AR layer K={ar_meta.extraction_layer} mse_scale={ar_meta.mse_scale:.3f}")
    subj_cfg = _text_cfg(read_json(ck["subject"].path / "config.json"))
    av_cfg = _text_cfg(read_json(ck["av"].path / "config.json"))
    ar_cfg = _text_cfg(read_json(ck["ar"].path / "config.json"))
    for name, cfg in (("subject", subj_cfg), ("AV", av_cfg), ("AR", ar_cfg)):
        if cfg.get("hidden_size") != av_meta.d_model:
            raise NlaError(f"The {name}'s hidden_size is {cfg.get('hidden_size')} but the sidecar says "
                           f"d_model={av_meta.d_model}: these checkpoints are not one family.")
    say(f"ok  hidden sizes match d_model={av_meta.d_model}")
    av_tok = load_tokenizer(ck["av"])
    ids = validate_av(av_meta, av_tok, av_cfg.get("hidden_size"))
    slot = find_injection_slot(av_meta, ids)
    say(f"ok  AV prompt: {len(ids)} tokens, one injection slot at {slot} "
        f"(neighbours {av_meta.left_neighbor_id}/{av_meta.right_neighbor_id})")
    ar_tok = load_tokenizer(ck["ar"])
    validate_ar(ar_meta, ar_tok, ar_cfg.get("num_hidden_layers"))
    say(f"ok  AR: {ar_cfg.get('num_hidden_layers')} layers = K+1, <bos> added, prompt suffix matches")
    k = ar_meta.extraction_layer if ar_meta.extraction_layer is not None else opts.layer
    n = subj_cfg.get("num_hidden_layers")
    if k is not None and n is not None and not 0 <= k < n:
        raise NlaError(f"Layer K={k} does not exist in the subject ({n} layers).")
    say(f"ok  subject has {n} layers; capturing layer {k}")
    if not (ck["ar"].path / "value_head.safetensors").is_file():
        raise NlaError(f"{ck['ar'].path} has no value_head.safetensors; the AR cannot score. Re-download it.")
    say("ok  value_head.safetensors present")
    say("pair is consistent")
    return True
