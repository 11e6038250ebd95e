"""Explain any vector: rows of a .npy or .safetensors file (an SAE decoder direction, a
steering vector, a mean difference) through the AV, each scored by the AR.

    from nla_tui.core.nla.vectors import load_vectors, explain_file
    rows = load_vectors("dirs.safetensors", name="W_dec")       # float32 [N, d]
    exps = explain_file(engine, "dirs.safetensors", name="W_dec")  # one Explanation per row

Files are read by core/store/vector_files.py (numpy + safetensors; no pickle: .npy object
arrays are refused). Width and finiteness are checked with the AV's own errors (av.check_vectors), before the AV runs.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import InputError
from ..store.vector_files import read_array
from ..types import Explanation, Sampling


def load_vectors(path: str | os.PathLike, name: str | None = None) -> np.ndarray:
    """float32 [N, d] from a .npy file or one tensor of a .safetensors file (`name`
    picks it; optional when the file holds exactly one). A 1-D array is one row."""
    p = Path(path).expanduser()
    arr = read_array(p, name)
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
