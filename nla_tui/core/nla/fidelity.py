"""The quantisation self-check: do the readouts of the subject (and the AR) as they run match
what the reference precision gives? What each number means: core/fidelity_report.py.

Steps, each freeing what it no longer needs before the next loads anything:
1. the running subject's layer-K activations of each conversation (one plain forward pass,
   stopped after layer K);
2. the reference subject (the checkpoint read again from disk, so a subject damaged in memory
   is caught too), cut to layers 0..K and placed in the memory left (models/reference.py):
   the same activations;
3. the AV and AR as they run explain both sets at the same positions (greedy) and score them;
4. unless the AR runs in the reference precision, the reference AR (also cut, also placed in
   what is left) scores the reference explanations.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Callable, Sequence

import numpy as np

from ..errors import Cancelled
from ..fidelity_report import FidelityReport
from ..models.loading import Checkpoint, model_device, text_config
from ..models.reference import layer_activations, reference_model
from ..types import Message, Sampling
from . import explain as nla_explain
from .ar import Reconstructor

# A short conversation every check reads (the user's open one is added when there is one).
FIXED_CONVERSATION = [
    Message(role="user", content="What is the capital of France, and why is it famous? Answer in two sentences."),
    Message(role="assistant", content="The capital of France is Paris. It is famous for the Eiffel Tower, the "
                                      "Louvre museum, its cafés and its long history as a centre of art and science."),
    Message(role="user", content="Write one line of Python that sums the squares of 1 to 10."),
    Message(role="assistant", content="print(sum(i * i for i in range(1, 11)))"),
]
POSITIONS = 12  # explained in the fixed conversation (half as many more in the open session)
EXPLAIN_TOKENS = 24  # greedy explanation length for the check (shorter than the TUI's: twice per position)
SESSION_TOKENS = 256  # the open session is read up to here (the offloaded reference is slow)

Progress = Callable[[str], None]


def spread(n_tokens: int, count: int) -> list[int]:
    """`count` positions spread evenly over 1..n_tokens-1 (position 0 is <bos>)."""
    if n_tokens <= 1 or count <= 0:
        return []
    if count >= n_tokens - 1:
        return list(range(1, n_tokens))
    step = (n_tokens - 1) / count
    return sorted({1 + int(k * step) for k in range(count)})


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    return (a * b).sum(-1) / np.maximum(na * nb, 1e-30)


def _fve(scores) -> list[float]:
    # A non-finite score (None) counts as nothing explained: the readout failed.
    return [s.fve_nrm if s is not None and s.fve_nrm is not None else 0.0 for s in scores]


def _se(diffs: list[float]) -> float:
    return statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else 0.0


def run_check(subject, av, ar, subject_ckpt: Checkpoint, ar_ckpt: Checkpoint, quants: dict[str, str],
              reference: str, device: str, conversations: Sequence[tuple[str, list[int], int]],
              tokens: int = EXPLAIN_TOKENS, budget: int | None = None, progress: Progress | None = None,
              cancel: threading.Event | None = None) -> FidelityReport:
    """`conversations`: (label, token ids, positions to explain) each. `budget`: force the
    reference models into this many bytes of the execution device (the rest offloaded)."""
    import torch

    say = progress or (lambda s: None)
    t0 = time.perf_counter()
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    layer = subject.layer

    def check_cancel() -> None:
        if cancel is not None and cancel.is_set():
            raise Cancelled()

    say(f"running subject ({quants['subject']}): layer {layer} activations")
    running = [layer_activations(subject.model, layer, ids, model_device(subject.model))
               for _, ids, _ in conversations]
    check_cancel()
    say(f"reference subject ({reference}, layers 0..{layer}): loading")
    with reference_model(subject_ckpt, reference, device, layer + 1, budget) as ref:
        say(f"reference subject on {ref.placement}: layer {layer} activations")
        exec_device = device if cuda else "cpu"
        refs = [layer_activations(ref.model, layer, ids, exec_device) for _, ids, _ in conversations]
        placement = ref.placement
    check_cancel()
    cos = np.concatenate([_cos(a[1:], b[1:]) for a, b in zip(running, refs)])
    picks = [(k, i) for k, (_, ids, n) in enumerate(conversations) for i in spread(len(ids), n)]
    ref_vecs = np.stack([refs[k][i] for k, i in picks]).astype(np.float32)
    run_vecs = np.stack([running[k][i] for k, i in picks]).astype(np.float32)
    sampling = Sampling(temperature=0.0, max_new_tokens=tokens)
    say(f"AV ({quants['av']}) + AR ({quants['ar']}): explaining {len(picks)} positions twice")
    ref_exps = nla_explain.explain(av, ar, ref_vecs, sampling, cancel=cancel)
    check_cancel()
    run_exps = nla_explain.explain(av, ar, run_vecs, sampling, cancel=cancel)
    check_cancel()
    if len(ref_exps) != len(picks) or len(run_exps) != len(picks):
        raise Cancelled()
    ref_texts, run_texts = [e.text for e in ref_exps], [e.text for e in run_exps]
    fve_ref, fve_run = _fve([e.score for e in ref_exps]), _fve([e.score for e in run_exps])
    fve_cross = _fve(ar.score(run_texts, ref_vecs))
    own = [x - y for x, y in zip(fve_ref, fve_run)]
    cross = [x - y for x, y in zip(fve_ref, fve_cross)]
    ar_ref_mean, ar_delta = None, 0.0
    if quants["ar"] != reference:
        say(f"reference AR ({reference}): loading")
        n_ar = text_config(ar.model).num_hidden_layers
        with reference_model(ar_ckpt, reference, device, n_ar, budget) as ref_ar:
            rec = Reconstructor(ref_ar.model, ar.tok, ar.meta, ar_ckpt.path, ar.variance, exec_device)
            fve_ar_ref = _fve(rec.score(ref_texts, ref_vecs))
            del rec
        ar_ref_mean = statistics.fmean(fve_ar_ref)
        ar_delta = statistics.fmean(abs(x - y) for x, y in zip(fve_ref, fve_ar_ref))
    return FidelityReport(
        running=dict(quants), reference=reference, layer=layer,
        conversations=[f"{label} ({len(ids)} tokens)" for label, ids, _ in conversations],
        positions=int(cos.size), explained=len(picks),
        cos_min=float(cos.min()), cos_median=float(np.median(cos)),
        fve_reference=statistics.fmean(fve_ref), fve_running=statistics.fmean(fve_run),
        fve_running_vs_reference=statistics.fmean(fve_cross),
        ar_running=statistics.fmean(fve_ref), ar_reference=ar_ref_mean, ar_abs_delta=ar_delta,
        own_se=_se(own), cross_se=_se(cross), mean_abs_delta=statistics.fmean(abs(x) for x in own),
        same_text=sum(a == b for a, b in zip(ref_texts, run_texts)),
        seconds=time.perf_counter() - t0,
        peak_gpu_bytes=int(torch.cuda.max_memory_allocated()) if cuda else None,
        reference_placement=placement)
