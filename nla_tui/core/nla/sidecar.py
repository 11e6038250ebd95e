"""The NLA sidecar `nla_meta.yaml`: parse (current and older key names) and
validate against the live tokenizer, with errors that name the fix.

Never hard-code these values: the checkpoint's sidecar is the source of truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import CheckpointError, brief

SIDECAR = "nla_meta.yaml"
INJECT_PLACEHOLDER = "<INJECT>"
SQRT_D = "sqrt_d_model"


@dataclass(frozen=True)
class NlaMeta:
    role: str  # "av" | "ar" (older sidecars say actor | critic)
    d_model: int
    injection_char: str
    injection_token_id: int
    left_neighbor_id: int
    right_neighbor_id: int
    av_template: str | None
    ar_template: str | None
    injection_scale: float | None
    mse_scale: float
    extraction_layer: int | None
    critic_suffix_ids: tuple[int, ...] | None
    fve_variance: float | None  # predict-the-mean baseline; optional nla-tui extension
    untrained: bool  # nla-tui's demo pair marks itself so the UI can say so
    path: Path
    # What the pair is, in words, from the sidecar's `training` block (nla-tui's trained
    # demo pair): a short label for the status line and a sentence for panes and exports.
    # Empty for hub pairs (they carry no such block) and for an untrained pair.
    pair_label: str = ""
    pair_note: str = ""


# What a pair trained by the context-and-prediction recipe can tell you: said next to
# its explanations so nobody reads a 270M pair's text as deep concepts.
RECIPE_SCOPE = {
    "context-and-prediction": ("a small model's explanations name the token, its context and "
                               "the likely next tokens, not deep concepts"),
}


def describe_training(meta: dict) -> tuple[str, str]:
    """(label, note) for a sidecar whose `training` block says how nla-tui trained the pair.

    The block's own `summary`/`label` win where present; otherwise both are put
    together from its recipe and held-out eval, so the words follow the shipped figures.
    """
    training = meta.get("training")
    extra = meta.get("nla_tui") or {}
    if not isinstance(training, dict) or extra.get("untrained"):
        return "", ""
    ev = training.get("eval") if isinstance(training.get("eval"), dict) else {}
    fve = ev.get("fve_mean")
    fve_txt = f"held-out fve {float(fve):.2f}" if isinstance(fve, (int, float)) else ""
    recipe = str(training.get("recipe") or "")
    kind = next((k for k in RECIPE_SCOPE if k in recipe), "")
    label = str(training.get("label") or ("trained mini NLA" + (f" · {fve_txt}" if fve_txt else "")))
    if training.get("summary"):
        return label, str(training["summary"])
    base = str(extra.get("base") or "").split(" (")[0] or "the subject model"
    how = ", ".join(x for x in (f"{kind} recipe" if kind else "", fve_txt) if x)
    note = f"demo pair: {base}, trained here" + (f" ({how})" if how else "")
    if kind:
        note += f"; {RECIPE_SCOPE[kind]}"
    return label, note


def _need(d: dict, key: str, where: Path, hint: str = "") -> Any:
    if not isinstance(d, dict) or key not in d or d[key] is None:
        raise CheckpointError(
            f"The NLA sidecar {where} has no `{key}` field. {hint or 'Re-download the checkpoint: its nla_meta.yaml is incomplete.'}"
        )
    return d[key]


def _resolve_scale(raw: Any, d_model: int, field: str, where: Path) -> float | None:
    if raw is None:
        return None
    if raw == SQRT_D:
        return math.sqrt(d_model)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise CheckpointError(
            f"{where}: `{field}` is {brief(raw)}; expected a number or '{SQRT_D}'. Fix the sidecar."
        ) from None
    if isinstance(raw, bool) or not math.isfinite(value) or value <= 0:
        raise CheckpointError(
            f"{where}: `{field}` is {brief(raw)}; it must be a finite number above 0 (or '{SQRT_D}'). "
            f"A NaN or zero scale makes every score NaN. Restore the checkpoint's original sidecar."
        )
    return value


def _mapping(meta: dict, key: str, where: Path) -> dict:
    """A sub-section that must be a mapping when present (absent = empty)."""
    value = meta.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CheckpointError(f"{where}: `{key}` is a {type(value).__name__}; it must be a mapping "
                              f"of names to values. Restore the checkpoint's original {SIDECAR}.")
    return value


def _int(raw: Any, field: str, where: Path) -> int:
    if isinstance(raw, bool) or not isinstance(raw, (int, str)) or not str(raw).strip().lstrip("-").isdigit():
        raise CheckpointError(f"{where}: `{field}` is {brief(raw)}; it must be a whole number. "
                              f"Restore the checkpoint's original {SIDECAR}.")
    return int(raw)


def _template(raw: Any, slot: str, field: str, where: Path) -> str | None:
    """A prompt template: a string whose only format field is {slot} ({{ }} for braces)."""
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise CheckpointError(f"{where}: `{field}` is a {type(raw).__name__}; it must be text.")
    try:
        raw.format(**{slot: "x"})
    except (KeyError, IndexError, ValueError, AttributeError) as e:
        raise CheckpointError(
            f"{where}: `{field}` has a stray brace field ({type(e).__name__}: {e}); the only field "
            f"allowed is {{{slot}}}. Write {{{{ and }}}} for literal braces, or restore the "
            f"original template.") from None
    return raw


MAX_SIDECAR_BYTES = 1 << 20  # real sidecars are ~2 KB


def _load_yaml(path: Path) -> Any:
    """The sidecar's YAML, refusing what no sidecar needs and an attacker would use: a
    file over 1 MiB, and anchors/aliases (an 8-level alias bomb in 2 KB expands to
    gigabytes once anything formats the value)."""
    try:
        if path.stat().st_size > MAX_SIDECAR_BYTES:
            raise CheckpointError(f"{path} is {path.stat().st_size} bytes; an NLA sidecar is a few KB. "
                                  "Re-download the checkpoint.")
        text = path.read_text(encoding="utf-8")
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)):
            raise CheckpointError(f"{path} uses YAML aliases (*name), which an NLA sidecar never needs and "
                                  "which can expand to gigabytes. Write the values out, or re-download the "
                                  "checkpoint.")
        return yaml.safe_load(text)
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path} is not valid YAML ({brief(str(e))}). Re-download the checkpoint.") from None
    except OSError as e:
        raise CheckpointError(f"Cannot read {path}: {e.strerror or e}.") from None


def read_sidecar(checkpoint_dir: str | Path) -> NlaMeta:
    """Parse `<dir>/nla_meta.yaml`. Raises CheckpointError naming the missing piece."""
    root = Path(checkpoint_dir)
    path = root / SIDECAR
    if not path.is_file():
        raise CheckpointError(
            f"{root} has no {SIDECAR}: it is not an NLA checkpoint. NLA AV/AR repos ship this "
            f"sidecar beside config.json; point --av/--ar at the NLA checkpoint, not at the base model."
        )
    meta = _load_yaml(path)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} does not hold a mapping. Re-download the checkpoint.")
    kind = meta.get("kind", "nla_model")
    if kind != "nla_model":
        raise CheckpointError(f"{path} has kind {brief(kind)}; a model checkpoint needs kind: nla_model.")
    role = meta.get("role")
    role = {"actor": "av", "critic": "ar"}.get(role, role) if isinstance(role, str) else role
    if role not in ("av", "ar"):
        raise CheckpointError(f"{path}: role is {brief(meta.get('role'))}; expected av|ar (or older actor|critic).")
    d_model = _int(_need(meta, "d_model", path), "d_model", path)
    if d_model <= 0:
        raise CheckpointError(f"{path}: d_model is {d_model}; it must be the model's hidden size.")
    _need(meta, "tokens", path)
    _need(meta, "prompt_templates", path)
    tokens = _mapping(meta, "tokens", path)
    templates = _mapping(meta, "prompt_templates", path)
    extraction = _mapping(meta, "extraction", path)
    critic = _mapping(meta, "critic", path)
    own = _mapping(meta, "nla_tui", path)
    layer = critic.get("extraction_layer_index", critic.get("num_hidden_layers",
                                                            meta.get("extraction_layer_index")))
    av_t = _template(templates.get("av", templates.get("actor")), "injection_char", "prompt_templates.av", path)
    ar_t = _template(templates.get("ar", templates.get("critic")), "explanation", "prompt_templates.ar", path)
    if role == "av" and not av_t:
        raise CheckpointError(f"{path} has no prompt_templates.av (or older .actor). The AV cannot build its prompt.")
    if role == "ar" and not ar_t:
        raise CheckpointError(f"{path} has no prompt_templates.ar (or older .critic). The AR cannot build its prompt.")
    inj_scale = _resolve_scale(extraction.get("injection_scale"), d_model, "extraction.injection_scale", path)
    if role == "av" and inj_scale is None:
        raise CheckpointError(
            f"{path} has no extraction.injection_scale. The AV was trained with vectors rescaled to "
            f"that L2 norm; without it explanations are garbage. Use the checkpoint's original sidecar."
        )
    mse = _resolve_scale(extraction.get("mse_scale", SQRT_D), d_model, "extraction.mse_scale", path)
    if mse is None:
        raise CheckpointError(f"{path}: extraction.mse_scale is null (raw-MSE mode), which nla-tui cannot score.")
    suffix = tokens.get("critic_suffix_ids")
    if suffix is not None and not isinstance(suffix, list):
        raise CheckpointError(f"{path}: tokens.critic_suffix_ids must be a list of token ids.")
    var = _resolve_scale(meta.get("fve_variance", own.get("fve_variance")), d_model, "fve_variance", path)
    injection_char = _need(tokens, "injection_char", path)
    if not isinstance(injection_char, str) or not injection_char:
        raise CheckpointError(f"{path}: tokens.injection_char must be a non-empty string.")
    pair_label, pair_note = describe_training(meta)
    return NlaMeta(
        role=role,
        d_model=d_model,
        injection_char=injection_char,
        injection_token_id=_int(_need(tokens, "injection_token_id", path), "tokens.injection_token_id", path),
        left_neighbor_id=_int(_need(tokens, "injection_left_neighbor_id", path),
                              "tokens.injection_left_neighbor_id", path),
        right_neighbor_id=_int(_need(tokens, "injection_right_neighbor_id", path),
                               "tokens.injection_right_neighbor_id", path),
        av_template=av_t,
        ar_template=ar_t,
        injection_scale=inj_scale,
        mse_scale=float(mse),
        extraction_layer=None if layer is None else _int(layer, "extraction_layer_index", path),
        critic_suffix_ids=None if suffix is None else tuple(
            _int(i, "tokens.critic_suffix_ids", path) for i in suffix),
        fve_variance=var,
        untrained=bool(own.get("untrained", False)),
        path=path,
        pair_label=pair_label,
        pair_note=pair_note,
    )


def template_ids(tokenizer, content: str) -> list[int]:
    """The AV prompt as token ids, in ONE step through the chat template (so there is
    exactly one <bos>; encoding the rendered string again would add a second)."""
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=True, add_generation_prompt=True
    )
    # transformers 5 may return a BatchEncoding or a nested list here.
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return [int(i) for i in ids]


def av_content(meta: NlaMeta, custom_prompt: str | None = None) -> str:
    """The user-turn text of the AV prompt, with the injection char in place."""
    if custom_prompt is not None:
        if custom_prompt.count(INJECT_PLACEHOLDER) != 1:
            raise CheckpointError(
                f"A custom AV prompt must contain {INJECT_PLACEHOLDER} exactly once (found "
                f"{custom_prompt.count(INJECT_PLACEHOLDER)}). Put it where the activation goes, "
                f"e.g. 'What is <concept>{INJECT_PLACEHOLDER}</concept>?'"
            )
        return custom_prompt.replace(INJECT_PLACEHOLDER, meta.injection_char)
    assert meta.av_template is not None
    if "{injection_char}" not in meta.av_template:
        raise CheckpointError(
            f"{meta.path}: prompt_templates.av has no {{injection_char}} slot, so the activation "
            f"has nowhere to go. Restore the checkpoint's original template."
        )
    return meta.av_template.format(injection_char=meta.injection_char)


def find_injection_slot(meta: NlaMeta, ids: list[int], *, check_neighbors: bool = True) -> int:
    """The one position where the vector goes: the injection token with the sidecar's
    neighbours. Zero or several such positions is an error, never a guess."""
    hits = [i for i, t in enumerate(ids) if t == meta.injection_token_id]
    good = [i for i in hits if 0 < i < len(ids) - 1 and (not check_neighbors or (
        ids[i - 1] == meta.left_neighbor_id and ids[i + 1] == meta.right_neighbor_id))]
    if len(good) != 1:
        detail = ""
        if len(hits) == 1 and not good:
            i = hits[0]
            detail = (f" The injection token is there but its neighbours are "
                      f"{ids[i - 1] if i > 0 else None}/{ids[i + 1] if i + 1 < len(ids) else None}, "
                      f"the sidecar expects {meta.left_neighbor_id}/{meta.right_neighbor_id}: template drift.")
        raise CheckpointError(
            f"Found {len(good)} injection slots in the AV prompt (expected exactly 1; "
            f"{len(hits)} occurrence(s) of {meta.injection_char!r}).{detail} The prompt template "
            f"or tokenizer does not match the checkpoint's sidecar ({meta.path})."
        )
    return good[0]


def validate_av(meta: NlaMeta, tokenizer, embedding_width: int | None = None) -> list[int]:
    """Check the sidecar against the live tokenizer; return the canonical prompt ids."""
    live = tokenizer.encode(meta.injection_char, add_special_tokens=False)
    if live != [meta.injection_token_id]:
        raise CheckpointError(
            f"Tokenizer drift: {meta.injection_char!r} encodes to {live}, the sidecar says "
            f"[{meta.injection_token_id}]. The tokenizer files do not belong to this checkpoint; "
            f"re-download the AV repo so tokenizer.json matches {meta.path}."
        )
    if tokenizer.unk_token_id is not None and live[0] == tokenizer.unk_token_id:
        raise CheckpointError(f"{meta.injection_char!r} maps to <unk>: wrong tokenizer for {meta.path}.")
    if embedding_width is not None and embedding_width != meta.d_model:
        raise CheckpointError(
            f"The AV's embedding width is {embedding_width} but its sidecar says d_model={meta.d_model}: "
            f"the weights and {meta.path} come from different models."
        )
    ids = template_ids(tokenizer, av_content(meta))
    bos = tokenizer.bos_token_id
    if bos is not None and ids[:2] == [bos, bos]:
        raise CheckpointError(
            "The AV prompt starts with two <bos> tokens: the chat template adds one and so does "
            "the tokenizer. Every position would shift; fix the tokenizer_config (add_bos_token)."
        )
    find_injection_slot(meta, ids)
    return ids


def validate_ar(meta: NlaMeta, tokenizer, num_layers: int | None = None) -> None:
    """The AR must be trained WITH <bos> (Gemma/Llama): check add_special_tokens adds it."""
    bos = tokenizer.bos_token_id
    probe = tokenizer("x", add_special_tokens=True)["input_ids"]
    if bos is not None and probe[0] != bos:
        raise CheckpointError(
            f"The AR tokenizer has <bos> id {bos} but does not add it (first token {probe[0]}). "
            f"The AR was trained with <bos>; without it FVE collapses. Set add_bos_token: true."
        )
    if "{explanation}" not in (meta.ar_template or ""):
        raise CheckpointError(f"{meta.path}: prompt_templates.ar has no {{explanation}} slot.")
    if meta.critic_suffix_ids:
        ids = tokenizer(meta.ar_template.format(explanation="x"), add_special_tokens=True)["input_ids"]
        n = len(meta.critic_suffix_ids)
        if tuple(ids[-n:]) != meta.critic_suffix_ids:
            raise CheckpointError(
                f"AR prompt suffix drift: the template ends in tokens {ids[-n:]}, the sidecar expects "
                f"{list(meta.critic_suffix_ids)}. The tokenizer does not match {meta.path}."
            )
    if num_layers is not None and meta.extraction_layer is not None and num_layers != meta.extraction_layer + 1:
        raise CheckpointError(
            f"The AR has {num_layers} layers but its sidecar says layer K={meta.extraction_layer}, "
            f"so it should have K+1={meta.extraction_layer + 1}. Wrong config.json or sidecar."
        )
