"""Steer: what if the model had thought otherwise? Steer with a vector from any source
(an edited explanation, a file, a − b of two tokens, an SAE feature), and compare two
tokens. Engine-level operations (duck-typed on a loaded Engine: subject, ar, tokens,
activations, explanations), kept out of engine.py.

Steering vector: runtime/steer_vectors.py resolves the source (for an edited explanation,
the NLA authors' recipe: AR(edited) − AR(original)); its direction, times alpha times its
unit's norm, is added to layer K's residual stream at the token (span "here") or at the token
and every later position (span "onward"), and the subject regenerates from there.
"""

from __future__ import annotations

import math
import threading
from typing import Callable

import numpy as np

from ..steer_results import Comparison, SteerResult, compare_activations
from ..errors import Cancelled, InputError
from ..models.steering import continue_from, last_logits, positions, top_candidates
from ..models.steering import steer as added_to_residual
from ..steer_jobs import DEFAULT_ALPHA, MAX_ALPHA, MAX_CONTINUATION
from ..steer_sources import TextReading, VectorSource, source_record
from ..types import CONTINUATION_TOKENS, Sampling
from .steer_vectors import original_explanation, resolve, text_reading

__all__ = ["original_explanation", "steer", "steering_vector", "compare", "check_arguments"]


def _check_index(engine, index: int, what: str = "--token") -> None:
    n = len(engine.tokens)
    if not 0 <= index < n:
        raise InputError(f"{what} {index} is out of range: the conversation has {n} tokens (0..{n - 1}).")


def as_source(index: int, edited: str | VectorSource, original: str | None = None) -> VectorSource:
    """A steer's source: an edited explanation (a str: a text reading of token `index`) or any source."""
    return TextReading(index, edited, original) if isinstance(edited, str) else edited


def check_request(engine, index: int, source: str | VectorSource, alpha: float, span: str,
                  max_new_tokens: int) -> None:
    """Everything about a steer request that can be wrong, checked before any model runs."""
    engine._need_models()
    _check_index(engine, index)
    check_arguments(index, source, alpha, span, max_new_tokens)


def check_arguments(index: int, source: str | VectorSource, alpha: float, span: str, max_new_tokens: int) -> None:
    """The checks that need no model and no file (`nla-tui steer` runs them before loading
    any; vector_files.check_source then reads the source's files)."""
    positions(index, span)  # raises on an unknown span
    source = as_source(index, source)
    if isinstance(source, TextReading):
        if not source.edited or not source.edited.strip():
            raise InputError("The edited explanation is empty: write what the model should have thought "
                             "(e.g. the original explanation with one concept changed).")
        if source.index != index:
            raise InputError(f"The edited explanation is of token {source.index}, but the steer is at token "
                             f"{index}: a text reading steers the token it explains.")
    if not math.isfinite(alpha):
        raise InputError(f"--alpha {alpha} is not a finite number: give a strength such as {DEFAULT_ALPHA:g}.")
    if abs(alpha) > MAX_ALPHA:
        raise InputError(f"--alpha {alpha} is outside -{MAX_ALPHA:g}..{MAX_ALPHA:g}: a steering vector that many times "
                         f"the activation's norm drowns the model (it only writes padding); try {DEFAULT_ALPHA:g}.")
    if not 1 <= max_new_tokens <= MAX_CONTINUATION:
        raise InputError(f"--max-new-tokens {max_new_tokens} must be at least 1 and at most {MAX_CONTINUATION}.")


def steering_vector(engine, index: int, original: str, edited: str, alpha: float) -> np.ndarray:
    """AR(edited) − AR(original), rescaled to ‖activation[index]‖ × alpha."""
    return text_reading(engine, TextReading(index, edited, original)).scaled(alpha)


def steer(engine, index: int, edited: str | VectorSource = "", alpha: float = DEFAULT_ALPHA, span: str = "here",
          max_new_tokens: int = CONTINUATION_TOKENS, original: str | None = None,
          sampling: Sampling = Sampling(), cancel: threading.Event | None = None,
          keep: bool = True, source: VectorSource | None = None) -> SteerResult:
    """Regenerate from token `index` with a steering vector in place: `source` (a file, a − b,
    an SAE feature, a text reading; runtime/steer_vectors.py), or, without one, the text reading
    of `edited` against `original` (None: the token's latest explanation). The unsteered
    continuation is decoded the same way in the same call, so the two compare like for
    like. The result is appended to engine.steered (keep=True); the conversation is
    not changed."""
    source = source if source is not None else as_source(index, edited, original)
    check_request(engine, index, source, alpha, span, max_new_tokens)
    source, resolved = resolve(engine, source, sampling, cancel)
    vector = resolved.scaled(alpha)
    lo, hi = positions(index, span)
    subject = engine.subject
    ids = [t.token_id for t in engine.tokens[:index + 1]]
    plain = continue_from(subject, ids, max_new_tokens, cancel=cancel)
    with added_to_residual(subject, vector, lo, hi):
        after = top_candidates(subject, last_logits(subject, ids))
        steered = continue_from(subject, ids, max_new_tokens, steered=True, cancel=cancel)
    if cancel is not None and cancel.is_set():
        raise Cancelled()
    from ..store.session import now_iso

    piece = lambda t: subject.tok.decode([t])  # noqa: E731
    original, edited = (source.original or "", source.edited) if isinstance(source, TextReading) else ("", "")
    result = SteerResult(
        index=index, token_text=engine.tokens[index].text, layer=subject.layer,
        original_explanation=original, edited_explanation=edited,
        alpha=float(alpha), span=span, vector_norm=float(np.linalg.norm(vector)),
        before=list(engine.tokens[index].top), after=after, original_tokens=[piece(t) for t in plain],
        steered_tokens=[piece(t) for t in steered], original_ids=plain, steered_ids=steered, created=now_iso(),
        branch=engine.branches.current if getattr(engine, "branches", None) and engine.branches.current else None,
        source=source_record(source, resolved))
    if keep:
        engine.steered.append(result)
    return result


class WrittenTokens:
    """Tokens the AV has written over `rows` explanations of at most `max_tokens` each; a
    row that closed counts as full. Reports (written, rows × max_tokens) on each change."""

    def __init__(self, rows: int, max_tokens: int, report: Callable[[int, int], None]):
        self.count, self.done = [0] * rows, [False] * rows
        self.max_tokens, self.report = max_tokens, report

    @property
    def written(self) -> int:
        return sum(self.max_tokens if d else min(c, self.max_tokens) for c, d in zip(self.count, self.done))

    def wrote(self, row: int, text: str) -> None:
        self.count[row] += 1  # one call per decode step of that row
        self.report(self.written, len(self.count) * self.max_tokens)

    def closed(self, row: int) -> None:
        self.done[row] = True
        self.report(self.written, len(self.count) * self.max_tokens)


def compare(engine, i: int, j: int, sampling: Sampling = Sampling(),
            cancel: threading.Event | None = None,
            progress: Callable[[int, int], None] | None = None) -> Comparison:
    """cos(a, b) and the explanations of a − b and b − a, each scored by the AR
    against its own difference vector. a == b gives the zero vector and a message.
    progress(tokens_written, at_most) follows the two explanations as the AV writes them."""
    engine._need_models()
    _check_index(engine, i, "Token")
    _check_index(engine, j, "Token")
    c = compare_activations(engine.activations, i, j)
    if c.message:  # a == b: nothing to explain, no model runs
        return c
    if progress is None:
        exps = engine.explain_vectors(np.stack([c.vector, -c.vector]), sampling, cancel=cancel)
    else:
        rows = WrittenTokens(2, sampling.max_new_tokens, progress)
        with engine.counting_rows(rows.closed):
            exps = engine.explain_vectors(np.stack([c.vector, -c.vector]), sampling, on_text=rows.wrote, cancel=cancel)
    if len(exps) < 2:
        raise Cancelled()
    c.a_minus_b, c.b_minus_a = exps
    return c
