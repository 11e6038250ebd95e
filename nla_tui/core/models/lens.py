"""The logit lens: each layer's residual at one position read through the subject's own final
norm and unembedding — what the subject "would say next" if it stopped at that layer.

An independent, non-learned readout shown beside the AV's learned one. It costs one
[L, d] x [d, vocab] matmul per token looked at (BENCHMARKS.md), from the residuals the
capture kept (capture.py), so it is computed for the token under the cursor, not for all.
The last layer's row is the subject's own next-token distribution by construction.
"""

from __future__ import annotations

import numpy as np
import torch

from .capture import top_candidates
from .loading import text_config

LENS_TOP = 3  # candidates per layer in the pane's layers x top-3 view


@torch.inference_mode()
def logit_lens(subject, residuals: np.ndarray, k: int = LENS_TOP) -> tuple[np.ndarray, np.ndarray]:
    """(ids [L, k], probs [L, k]) for one position's residuals [L, d] (every layer's output)."""
    norm = subject.decoder.norm
    h = torch.from_numpy(np.ascontiguousarray(residuals)).to(subject.device, norm.weight.dtype)
    return top_candidates(subject, text_config(subject.model), norm(h), k)
