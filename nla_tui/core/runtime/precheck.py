"""Checks on user input that need the subject's tokenizer but no weights."""

from __future__ import annotations

from ..models.context import check_context, context_limit
from ..models.conversation import tag_tokens
from ..models.loading import load_tokenizer, read_json, resolve_checkpoint
from ..nla.presets import resolve_sources
from ..types import Message


def check_transcript_fits(options, messages: list[Message], progress=None) -> int:
    """Tokenize the transcript with the subject's tokenizer (no weights load) and check it
    fits the subject's context; returns its length in tokens. `nla-tui run --messages`
    calls this before the engine loads anything. `progress(model, fraction, message)` hears
    about the demo's one-time build, which happens here on a first run."""
    _, sources = resolve_sources(options, progress)
    ckpt = resolve_checkpoint(sources["subject"])
    ids, _, _ = tag_tokens(load_tokenizer(ckpt), messages)
    check_context(len(ids), context_limit(read_json(ckpt.path / "config.json")), ckpt.name)
    return len(ids)


def _text_config(config: dict) -> dict:
    """config.json's text part (Gemma 3's multimodal wrapper nests it under text_config)."""
    inner = config.get("text_config")
    return inner if isinstance(inner, dict) and "hidden_size" in inner else config


def check_extra_pair(spec, subject_dir) -> tuple:
    """`--extra-pair`'s two directories judged against the subject from files alone (the
    sidecars and the subject's config.json; no weights): each is a local directory holding an
    NLA checkpoint of the right role, both name one layer, that layer exists in the subject and
    their d_model is the subject's hidden size. Returns (av_meta, ar_meta, layer); a
    CheckpointError / InputError of one line otherwise."""
    from pathlib import Path

    from ..errors import CheckpointError, InputError
    from ..nla.sidecar import read_sidecar
    from ..options import PAIR_FLAG

    metas = {}
    for role, where in (("av", spec.av), ("ar", spec.ar)):
        path = Path(where).expanduser()
        if not path.is_dir():
            raise InputError(f"{PAIR_FLAG} {role}={where}: no such directory. Give the local directory of the "
                             f"extra pair's {role.upper()} checkpoint (config.json, weights, nla_meta.yaml).")
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{PAIR_FLAG} {role}={where} has no config.json: not a Hugging Face model "
                                  "directory.")
        try:
            meta = read_sidecar(path)
        except CheckpointError as e:  # said as the flag's problem, not --av/--ar's
            raise CheckpointError(f"{PAIR_FLAG} {role}={where}: {e}") from None
        if meta.role != role:
            raise CheckpointError(f"{PAIR_FLAG} {role}={where} holds an {meta.role.upper()} checkpoint; "
                                  f"{role}= needs the pair's {role.upper()}.")
        metas[role] = meta
    av, ar = metas["av"], metas["ar"]
    layers = {m.extraction_layer for m in (av, ar) if m.extraction_layer is not None}
    if len(layers) > 1:
        raise CheckpointError(f"{PAIR_FLAG}: the AV says layer {av.extraction_layer} but the AR says layer "
                              f"{ar.extraction_layer}: not a pair.")
    if not layers:
        raise CheckpointError(f"{PAIR_FLAG}: neither sidecar names its extraction layer "
                              "(extraction_layer_index), so the pair cannot say which layer it reads.")
    layer = layers.pop()
    config = _text_config(read_json(Path(subject_dir) / "config.json"))
    hidden, n_layers = int(config.get("hidden_size", -1)), int(config.get("num_hidden_layers", -1))
    if not 0 <= layer < n_layers:
        raise InputError(f"{PAIR_FLAG} reads layer {layer}, but the subject has layers 0..{n_layers - 1}: "
                         "the pair belongs to another subject model.")
    for role, meta in metas.items():
        if meta.d_model != hidden:
            raise CheckpointError(f"{PAIR_FLAG} {role}: d_model is {meta.d_model} but the subject's hidden size is "
                                  f"{hidden}: this pair was trained on another model.")
    return av, ar, layer


def check_extra_pair_args(options, progress=None) -> None:
    """check_extra_pair for EngineOptions (the CLI calls this before any model loads; the
    demo's one-time build happens here on a first run)."""
    if options.extra_pair is None:
        return
    _, sources = resolve_sources(options, progress)
    check_extra_pair(options.extra_pair, resolve_checkpoint(sources["subject"]).path)
