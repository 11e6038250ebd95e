"""Every steering source (core/steer_sources.py) resolved to one direction on the subject's
layer K, with what alpha multiplies:

    file / SAE decoder row / a − b   the layer's median activation norm over the session's tokens
    text reading (edited explanation) the steered token's own activation norm (issue 13's unit)

A file or an SAE row is read and checked without a model (core/store/vector_files.py:
size, dtype, finite, an SAE's layer); a − b is two rows of the captured activations; the
text reading is AR(edited) − AR(original), the only source that runs a model here.
runtime/steer.py adds the scaled vector (`ResolvedVector.scaled(alpha)`) and regenerates.
"""

from __future__ import annotations

import threading

import numpy as np

from ..errors import Cancelled, InputError
from ..steer_sources import TOKEN_NORM, ResolvedVector, TextReading, VectorSource, median_norm
from ..store.vector_files import check_source
from ..types import Sampling


def original_explanation(engine, index: int, sampling: Sampling = Sampling(),
                         cancel: threading.Event | None = None) -> str:
    """The token's latest explanation; explained now if it has none."""
    have = engine.explanations.get(index)
    if have:
        return have[0].text
    exps = engine.explain([index], sampling, cancel=cancel)
    if not exps:
        raise Cancelled()
    return exps[0].text


def text_reading(engine, source: TextReading) -> ResolvedVector:
    """AR(edited) − AR(original) (source.original must be filled in), in units of
    ‖activation[index]‖."""
    original, edited = source.original or "", source.edited
    if original.strip() == edited.strip():
        raise InputError("The edited explanation is the same as the original, so there is no direction to "
                         "steer in: change what it says (a concept, an entity, a sentiment).")
    recon = engine.ar.reconstruct([original, edited]).astype(np.float64)
    diff = recon[1] - recon[0]
    if not np.isfinite(diff).all() or float(np.linalg.norm(diff)) == 0.0:
        raise InputError("The AR reconstructs the original and the edited explanation to the same vector, so "
                         "there is no direction to steer in: change the explanation more.")
    # float64 kept (not check_direction's float32): the vector steer has always added.
    return ResolvedVector(diff, source.describe(), TOKEN_NORM, float(np.linalg.norm(engine.activations[source.index])))


def resolve(engine, source: VectorSource, sampling: Sampling = Sampling(),
            cancel: threading.Event | None = None) -> tuple[VectorSource, ResolvedVector]:
    """The source (a text reading with its original explanation filled in: the token's
    latest, explained now if it has none) and its vector on the engine's layer K."""
    info = engine.info
    if isinstance(source, TextReading):
        check_source(source, info.d_model, info.layer, len(engine.tokens))
        if source.original is None:
            source = TextReading(source.index, source.edited,
                                 original_explanation(engine, source.index, sampling, cancel))
        return source, text_reading(engine, source)
    acts = engine.activations
    median_norm(acts)  # no captured tokens: refused here, with what to do
    resolved = check_source(source, info.d_model, info.layer, len(engine.tokens), acts)
    if resolved is None:  # every source but a text reading resolves from files and activations
        raise InputError(f"{source.describe()} could not be resolved to a vector.")
    return source, resolved
