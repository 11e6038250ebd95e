"""Explain any vector: rows of a .npy or .safetensors file (an SAE decoder direction, a
steering vector, a mean difference) through the AV, each scored by the AR.

    from nla_tui.core.nla.vectors import load_vectors, explain_file
    rows = load_vectors("dirs.safetensors", name="W_dec")       # float32 [N, d]
    exps = explain_file(engine, "dirs.safetensors", name="W_dec")  # one Explanation per row

numpy + safetensors.numpy only (no pickle: .npy object arrays are refused). Width and
finiteness are checked with the AV's own errors (av.check_vectors), before the AV runs.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import InputError
from ..types import Explanation, Sampling

SUFFIXES = (".npy", ".safetensors")


def load_vectors(path: str | os.PathLike, name: str | None = None) -> np.ndarray:
    """float32 [N, d] from a .npy file or one tensor of a .safetensors file (`name`
    picks it; optional when the file holds exactly one). A 1-D array is one row."""
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
            arr = np.load(p, allow_pickle=False)
        except ValueError as e:  # object arrays need pickle, which nla-tui never unpickles
            raise InputError(f"{p} cannot be read without unpickling ({e}); save a plain float array "
                             f"(numpy.save(path, array.astype('float32'))).") from None
        except (OSError, EOFError) as e:  # EOFError: an empty or truncated file
            raise InputError(f"{p} is not a readable .npy file ({e}).") from None
    else:
        from safetensors.numpy import load_file

        try:
            tensors = load_file(str(p))
        except Exception as e:  # safetensors raises its own error types for a bad header
            raise InputError(f"{p} is not a readable safetensors file ({e}).") from None
        if name is None:
            if len(tensors) != 1:
                raise InputError(f"{p} holds {len(tensors)} tensors ({', '.join(sorted(tensors)) or 'none'}); "
                                 f"pick one with --name KEY.")
            name = next(iter(tensors))
        if name not in tensors:
            raise InputError(f"{p} has no tensor {name!r}; it holds {', '.join(sorted(tensors))}.")
        arr = tensors[name]
    if arr.dtype.kind not in "fiu":
        raise InputError(f"{p} holds {arr.dtype} data; the vectors must be numbers (float32 rows of width d_model).")
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise InputError(f"{p} holds an array of shape {tuple(arr.shape)}; give one vector [d_model] or rows "
                         f"[N, d_model].")
    return arr


def check_rows(rows: np.ndarray, d_model: int) -> np.ndarray:
    """The AV's width/finiteness/zero checks, before any model runs."""
    from .av import check_vectors

    return check_vectors(rows, d_model)


def explain_file(engine, path: str | os.PathLike, name: str | None = None, sampling: Sampling = Sampling(),
                 prompt: str | None = None, on_text: Callable[[int, str], None] | None = None,
                 cancel: threading.Event | None = None) -> list[Explanation]:
    """Explain and score every row of the file with a loaded Engine."""
    rows = check_rows(load_vectors(path, name), engine.info.d_model)
    return engine.explain_vectors(rows, sampling, prompt, on_text, cancel, list(range(len(rows))))
