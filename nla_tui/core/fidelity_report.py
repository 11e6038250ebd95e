"""The quantisation self-check's result (`nla-tui check --fidelity`, the TUI's fidelity
check): plain data, its verdict and its table, shared by the CLI, the TUI, exports and the
status line. Standard library only (the UI imports it); the check itself is
core/nla/fidelity.py, its cache core/store/fidelity_cache.py.

What the numbers mean (docs/FIDELITY.md):
- activation cos: the subject's layer-K activations in the running precision against the
  reference precision's (bf16 on CUDA, fp32 on CPU), every position of the conversations
  but the first (<bos>).
- explanation fve: the AV and AR as they run explain the reference activations and the
  running ones at the same positions (greedy); the mean fve_nrm of each set against its own
  activations, and of the running set against the reference activations (does the readout
  describe what the reference subject computes?). The subject's drift is the larger of the
  two drops.
- AR: the reference activations' explanations scored by the AR as it runs and by the AR in
  the reference precision; the mean |Δ fve_nrm|.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

CHECK_VERSION = 2  # bump when what the check computes changes: cached verdicts of older versions are ignored
FVE_TOLERANCE = 0.02  # a precision whose readouts move by more than this fve (mean) "drifts"
# Activations this far apart (median cos) are another computation, whatever the readouts' fve says
# (a broken subject's explanations can score as well as the reference's: they describe garbage well).
COS_FLOOR = 0.95
ROLES = ("subject", "av", "ar")


def reference_precision(device: str) -> str:
    """The precision the AV was trained on where it can run: bf16 on CUDA; on CPU fp32 (bf16
    matmuls on CPU are emulated and slow, and fp32 is at least as exact)."""
    return "bf16" if device.startswith("cuda") else "fp32"


def quant_label(quants: dict[str, str]) -> str:
    """"nf4" when all three models run in one precision, else "subject bf16 · av nf4 · ar int8"."""
    values = {quants.get(r) for r in ROLES}
    if len(values) == 1:
        return next(iter(values)) or ""
    return " · ".join(f"{r} {quants.get(r, '?')}" for r in ROLES)


@dataclass
class FidelityReport:
    running: dict[str, str]  # role -> precision the models run in
    reference: str  # bf16 / fp32
    layer: int
    conversations: list[str]  # what was read ("fixed conversation (41 tokens)", "open session (…)")
    positions: int  # activations compared (every position but the first of each conversation)
    explained: int  # positions explained twice (reference and running activations)
    cos_min: float
    cos_median: float
    fve_reference: float  # mean fve_nrm: explanations of the reference activations, vs themselves
    fve_running: float  # explanations of the running activations, vs themselves
    fve_running_vs_reference: float  # the same explanations, vs the reference activations
    ar_running: float  # mean fve_nrm of the reference explanations, AR as it runs
    ar_reference: float | None  # the same, AR in the reference precision (None: the AR runs in it)
    ar_abs_delta: float  # mean |Δ| between the two (0 when the AR runs in the reference precision)
    # Per position, the reference's fve minus the running one's (own activations / reference
    # activations): the standard error of their means, so a drift is read against its noise.
    own_se: float = 0.0
    cross_se: float = 0.0
    mean_abs_delta: float = 0.0  # mean |Δ fve| per position (how much single readouts move)
    same_text: int = 0  # positions whose two explanations are word for word the same
    seconds: float = 0.0
    peak_gpu_bytes: int | None = None  # CUDA only
    reference_placement: str = ""  # where the reference subject ran ("cuda:0 30 layers, cpu 12, disk 0")
    check_version: int = CHECK_VERSION
    created: str = ""
    key: str = ""
    tolerance: float = FVE_TOLERANCE
    notes: list[str] = field(default_factory=list)

    # ------------------------------------------------------------ verdict

    @property
    def subject_drop(self) -> float:
        """fve lost by reading the running subject instead of the reference one (positive = worse)."""
        return max(self.fve_reference - self.fve_running, self.fve_reference - self.fve_running_vs_reference)

    @property
    def drop_se(self) -> float:
        """The standard error of subject_drop (of whichever drop it is)."""
        own = self.fve_reference - self.fve_running
        cross = self.fve_reference - self.fve_running_vs_reference
        return self.own_se if own >= cross else self.cross_se

    @property
    def activations_differ(self) -> bool:
        return self.cos_median < COS_FLOOR

    @property
    def subject_drifts(self) -> bool:
        return self.subject_drop > self.tolerance or self.activations_differ

    @property
    def ar_drifts(self) -> bool:
        return self.ar_abs_delta > self.tolerance

    @property
    def drifts(self) -> bool:
        return self.subject_drifts or self.ar_drifts

    def subject_verdict(self) -> str:
        p, ref = self.running.get("subject", "?"), self.reference
        if self.activations_differ:
            return f"{p} subject: activations differ from {ref} (median cos {self.cos_median:.3f} < {COS_FLOOR:g})"
        pm = f" ± {self.drop_se:.3f}" if self.drop_se else ""
        if self.subject_drifts:
            return f"{p} subject: readouts drift {self.subject_drop:.3f}{pm} fve from {ref} (tolerance {self.tolerance:g})"
        return f"{p} subject: readouts within {self.tolerance:g} fve of {ref}" + (
            f" ({self.subject_drop:+.3f}{pm})" if self.drop_se else "")

    def ar_verdict(self) -> str:
        p, ref = self.running.get("ar", "?"), self.reference
        if self.ar_reference is None:
            return f"{p} AR: runs in the reference precision"
        if self.ar_drifts:
            return f"{p} AR: scores drift {self.ar_abs_delta:.3f} fve from {ref} (tolerance {self.tolerance:g})"
        return f"{p} AR: scores within {self.tolerance:g} fve of {ref}"

    def verdict(self) -> str:
        """One line: "nf4 subject: readouts within 0.02 fve of bf16; nf4 AR: scores within 0.02 fve of bf16"."""
        return f"{self.subject_verdict()}; {self.ar_verdict()}"

    def advice(self) -> str:
        """What to do about a drift ("" when there is none)."""
        if not self.drifts:
            return ""
        if self.subject_drifts:
            return (f"run the subject in {self.reference} (--subject-quant {self.reference}) or let nla-tui pick "
                    f"the highest precision that fits (--quant auto)")
        return "let nla-tui pick the highest precision that fits (--quant auto)"

    def short(self) -> str:
        """The status line's words: "fidelity ok (subject nf4 vs bf16)" / "nf4 subject drifts 0.07 fve"."""
        if self.activations_differ:
            return f"{self.running.get('subject')} subject's activations differ from {self.reference}"
        if self.subject_drifts:
            return f"{self.running.get('subject')} subject drifts {self.subject_drop:.2f} fve vs {self.reference}"
        if self.ar_drifts:
            return f"{self.running.get('ar')} AR drifts {self.ar_abs_delta:.2f} fve vs {self.reference}"
        return f"fidelity ok vs {self.reference}"

    # ------------------------------------------------------------ table

    def table(self) -> list[str]:
        """The check's one table, as plain lines (the CLI prints them, the TUI shows them)."""
        run_s, ref = self.running.get("subject", "?"), self.reference
        run_ar = self.running.get("ar", "?")
        ar_ref = "= running" if self.ar_reference is None else f"{self.ar_reference:.3f}"
        rows = [
            ("", f"running", f"reference", "drift"),
            ("subject precision", run_s, ref, ""),
            ("layer-K activation cos, min / median", f"{self.cos_min:.4f} / {self.cos_median:.4f}", "1 / 1",
             f"{1 - self.cos_min:.4f}"),
            ("explanation fve (AV+AR as they run)", f"{self.fve_running:.3f}", f"{self.fve_reference:.3f}",
             f"{self.fve_reference - self.fve_running:+.3f}"),
            (f"  running explanations vs {ref} activations", f"{self.fve_running_vs_reference:.3f}",
             f"{self.fve_reference:.3f}", f"{self.fve_reference - self.fve_running_vs_reference:+.3f}"),
            (f"AR score of the same explanations ({run_ar} / {ref})", f"{self.ar_running:.3f}", ar_ref,
             f"|Δ| {self.ar_abs_delta:.3f}"),
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [f"fidelity self-check: layer {self.layer}; {'; '.join(self.conversations)}; "
                 f"{self.positions} positions compared, {self.explained} explained twice (greedy)"]
        lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
                  for r in rows]
        if self.explained:
            lines.append(f"per position: mean |Δ fve| {self.mean_abs_delta:.3f}; {self.same_text} of {self.explained} "
                         f"explanations word for word the same; ± is one standard error of the mean")
        lines.append(f"verdict: {self.verdict()}")
        if self.drop_se > self.tolerance:
            lines.append(f"note: at {self.explained} positions the drop is known to ±{self.drop_se:.3f}, wider than "
                         f"the tolerance: more positions narrow it (--positions {4 * max(self.explained, 12)}; the "
                         f"fixed conversation has ~100, --messages adds yours)")
        if self.advice():
            lines.append(f"advice: {self.advice()}")
        extra = [f"{self.seconds:.0f} s"]
        if self.peak_gpu_bytes is not None:
            extra.append(f"peak GPU {self.peak_gpu_bytes / 2**30:.1f} GiB")
        if self.reference_placement:
            extra.append(f"reference subject on {self.reference_placement}")
        lines.append("(" + ", ".join(extra) + f"; AV {self.running.get('av', '?')}, not compared)")
        lines += [f"note: {n}" for n in self.notes]
        return lines

    # ------------------------------------------------------------ json

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Any) -> "FidelityReport":
        """TypeError/ValueError on a malformed document (the cache then recomputes)."""
        if not isinstance(d, dict):
            raise TypeError("a fidelity report is a JSON object")
        known = set(cls.__dataclass_fields__)
        r = cls(**{k: v for k, v in d.items() if k in known})
        if not isinstance(r.running, dict) or not all(isinstance(v, str) for v in r.running.values()):
            raise TypeError("running must map roles to precisions")
        for name in ("cos_min", "cos_median", "fve_reference", "fve_running", "fve_running_vs_reference",
                     "ar_running", "ar_abs_delta", "seconds", "tolerance", "own_se", "cross_se",
                     "mean_abs_delta"):
            setattr(r, name, float(getattr(r, name)))
        if r.ar_reference is not None:
            r.ar_reference = float(r.ar_reference)
        r.layer, r.positions, r.explained, r.same_text = int(r.layer), int(r.positions), int(r.explained), \
            int(r.same_text)
        r.conversations = [str(c) for c in r.conversations]
        r.notes = [str(n) for n in r.notes]
        return r
