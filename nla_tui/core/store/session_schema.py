"""The one check of a whole session.json, run on every load before any field is used.

Each field's type and range is declared once below (docs/SESSION_SCHEMA.md describes
the same fields); `check_session_doc` walks the document against it and names the
first bad field by its path, e.g. `steered[0].index must be a whole number, got '5'`.
Without it a mistyped field surfaced much later, as a traceback in export or a crash
of the TUI (issue 19, item 8). Values echoed in a message are cut short (`brief`), so a
hostile document cannot produce a huge message. Unknown fields are allowed (a newer
minor version may add some); known ones must be right.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from ..errors import brief

Check = Callable[[Any, str], None]
MAX_INT = 2 ** 63  # ids, indices and counts: anything larger is damage, not data


class SchemaError(ValueError):
    """`path` is where in the document, `problem` what is wrong there."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path or 'the document'} {problem}")
        self.path, self.problem = path, problem


def _fail(path: str, want: str, value: Any) -> None:
    raise SchemaError(path, f"must be {want}, got {brief(value)}")


def string(value: Any, path: str) -> None:
    if not isinstance(value, str):
        _fail(path, "a string", value)


def integer(low: int = -MAX_INT) -> Check:
    def check(value: Any, path: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value < MAX_INT:
            _fail(path, "a whole number" + (f" of at least {low}" if low > -MAX_INT else ""), value)
    return check


def number(value: Any, path: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(path, "a finite number", value)


def boolean(value: Any, path: str) -> None:
    if not isinstance(value, bool):
        _fail(path, "true or false", value)


def optional(check: Check) -> Check:
    def opt(value: Any, path: str) -> None:
        if value is not None:
            check(value, path)
    return opt


def one_of(*choices: str) -> Check:
    def check(value: Any, path: str) -> None:
        if value not in choices:
            _fail(path, " or ".join(repr(c) for c in choices), value)
    return check


def either(want: str, *checks: Check) -> Check:
    def check(value: Any, path: str) -> None:
        for c in checks:
            try:
                c(value, path)
                return
            except SchemaError:
                continue
        _fail(path, want, value)
    return check


def list_of(item: Check) -> Check:
    def check(value: Any, path: str) -> None:
        if not isinstance(value, list):
            _fail(path, "a list", value)
        for i, v in enumerate(value):
            item(v, f"{path}[{i}]")
    return check


def mapping(values: Check) -> Check:
    """An object with any string keys, each value checked."""
    def check(value: Any, path: str) -> None:
        if not isinstance(value, dict):
            _fail(path, "an object", value)
        for k, v in value.items():
            values(v, f"{path}.{k}")
    return check


def obj(required: dict[str, Check], optional_fields: dict[str, Check] | None = None) -> Check:
    """An object with these fields (optional ones may be missing); others are allowed."""
    def check(value: Any, path: str) -> None:
        if not isinstance(value, dict):
            _fail(path, "an object", value)
        where = f"{path}." if path else ""
        for name, c in required.items():
            if name not in value:
                raise SchemaError(f"{where}{name}", "is missing")
            c(value[name], where + name)
        for name, c in (optional_fields or {}).items():
            if name in value:
                c(value[name], where + name)
    return check


candidate = obj({"token_id": integer(), "text": string, "prob": number})
score = obj({}, {"cos": optional(number), "mse_nrm": optional(number), "fve_nrm": optional(number)})
sampling = obj({}, {"temperature": number, "max_new_tokens": integer(0), "seed": integer(), "top_p": number})
tool_call = obj({"function": obj({"name": string}, {"arguments": either("a string, object or list", string,
                                                                          mapping(lambda v, p: None),
                                                                          list_of(lambda v, p: None))})},
                {"id": optional(string), "type": optional(string)})

MODELS = obj(
    {"subject": string, "av": string, "ar": string, "layer": integer(0), "quant": string, "device": string,
     "d_model": integer(0)},
    {"preset": optional(string), "revision": mapping(optional(string)), "injection_scale": optional(number),
     "mse_scale": optional(number), "fve_variance": optional(number), "untrained_av": boolean,
     "placement": string, "pair_label": string, "pair_note": string, "quants": mapping(string),
     "fidelity": string, "fidelity_drifts": boolean})
MESSAGE = obj({"role": string},
              {"content": optional(string), "name": optional(string), "tool_calls": optional(list_of(tool_call)),
               "tool_call_id": optional(string)})
TOKEN = obj({"index": integer(0), "token_id": integer(), "text": string, "role": string, "turn": integer(-1),
             "norm": optional(number)},
            {"top": list_of(candidate)})
EXPLANATION = obj({"index": integer(0), "text": string},
                  {"raw": string, "sampling": sampling, "prompt": optional(string), "score": optional(score),
                   "truncated": boolean, "warnings": list_of(string), "untrained_av": boolean})
# Where a steer's vector came from (steer_sources.source_record); optional: older steers are
# an edited explanation's. Each kind's own fields are checked when present.
STEER_SOURCE = obj({"kind": one_of("text", "file", "difference", "sae"), "describe": string, "norm": number,
                    "unit": string, "unit_norm": number},
                   {"index": integer(0), "path": string, "name": optional(string), "a": integer(0), "b": integer(0),
                    "directory": string, "feature": integer(0), "any_layer": boolean, "layer": optional(integer()),
                    "warnings": list_of(string)})
STEERED = obj({"index": integer(0), "token_text": string, "layer": integer(0), "original_explanation": string,
               "edited_explanation": string, "alpha": number, "span": one_of("here", "onward"),
               "vector_norm": number},
              {"before": list_of(candidate), "after": list_of(candidate), "original_tokens": list_of(string),
               "steered_tokens": list_of(string), "original_ids": list_of(integer()),
               "steered_ids": list_of(integer()), "created": string, "branch": optional(integer(0)),
               "source": optional(STEER_SOURCE)})
NOTE = obj({"start": integer(0), "end": integer(0), "text": string, "created": string},
            {"branch": optional(either("a branch id (a string or a whole number)", string, integer(0)))})
BRANCH = obj({"id": integer(1), "parent": integer(0), "edited": integer(0)},
             {"created": string, "label": string, "first_changed": optional(integer(0)),
              "conversation": list_of(MESSAGE), "tokens": list_of(TOKEN), "explanations": list_of(EXPLANATION)})
# The extra AV/AR pair (--extra-pair) and its explanations, optional: sessions without one
# (and every session saved before it existed) simply lack both fields.
EXTRA_PAIR = obj({"name": string, "label": string, "models": MODELS})
SESSION = obj({"schema_version": integer(0), "name": string, "created": string, "updated": string,
               "models": MODELS},
              {"conversation": list_of(MESSAGE), "tokens": list_of(TOKEN), "explanations": list_of(EXPLANATION),
               "steered": list_of(STEERED), "notes": list_of(NOTE), "branches": list_of(BRANCH),
               "current_branch": integer(0), "activations_file": optional(string),
               "activations_sha256": optional(string), "generation": integer(0),
               "extra_pair": optional(EXTRA_PAIR), "extra_explanations": list_of(EXPLANATION)})


def check_session_doc(doc: Any) -> None:
    """Raise SchemaError naming the first field of `doc` (a current-version session.json,
    after migration) whose type or range is wrong."""
    SESSION(doc, "")
