"""`--quant auto`: the highest precision each model can have in the free GPU memory.

The subject is raised first (its activations are what the AV reads: its precision moves every
readout), then the AR (it scores every explanation), then the AV. Each is raised to the first
precision of AUTO_LADDER with which the three models still fit the cards (the same placement
plan `load` makes, placement.plan_placement, splits over cards included); the others stay
where they are. When even nf4 does not fit, nf4 is kept and the plan's own error says why.
On CPU every model runs in fp32 (the CPU default: exact, and faster there than bf16 or 4-bit).
Pure arithmetic over configs and byte counts, so it is tested with faked free memory.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..errors import NlaError
from .placement import gpu_free_memory, parse_devices, plan_placement, role_sizes

AUTO_LADDER = ("bf16", "int8", "nf4")  # best first; fp32 would buy nothing on CUDA (the pairs were trained in bf16)
AUTO_ORDER = ("subject", "ar", "av")
FLOOR = "nf4"


def fits(configs: Mapping[str, Any], quants: Mapping[str, str], free: dict[str, int],
         explicit: dict[str, str], context_tokens: Mapping[str, int] | None = None) -> bool:
    try:
        plan_placement(role_sizes(configs, quants, context_tokens), free, explicit, quants.get("subject"))
    except NlaError:
        return False
    return True


def choose_quants(configs: Mapping[str, Any], device: str, fixed: Mapping[str, str] | None = None,
                  devices: str | None = None, free: dict[str, int] | None = None,
                  context_tokens: Mapping[str, int] | None = None) -> dict[str, str]:
    """role -> precision. `fixed`: roles whose precision the user chose (--subject-quant).
    `free`: the cards' free bytes (default: what CUDA reports now); `context_tokens`: as
    placement.role_sizes."""
    fixed = dict(fixed or {})
    if not device.startswith("cuda"):
        return {r: fixed.get(r, "fp32") for r in AUTO_ORDER}
    if free is None:
        free = gpu_free_memory()
    if device != "cuda" and not devices:
        free = {k: v for k, v in free.items() if k == device}  # one named card holds all three
    explicit = parse_devices(devices or "")
    picks = {r: fixed.get(r, FLOOR) for r in AUTO_ORDER}
    for role in AUTO_ORDER:
        if role in fixed:
            continue
        for quant in AUTO_LADDER:
            trial = {**picks, role: quant}
            if fits(configs, trial, free, explicit, context_tokens):
                picks = trial
                break
    return picks
