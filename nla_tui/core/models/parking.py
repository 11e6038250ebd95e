"""Explain-all memory: park the subject and the AR in host memory while the AV runs.

During explain-all only the AV works; on one 48 GB card the subject (15 GiB nf4) and the AR
(11 GiB) leave the AV's KV cache room for ~8 rows, and 150 explanations take 19 passes
(PERF.md: 204 s). Moving their weights to pinned host memory for the AV phase frees that room
for one or two large batches; they come back after, also when explain-all is cancelled or fails.

`plan_explain` is the decision, pure arithmetic over byte counts (tested without a GPU);
`parked` does the moving. Weights move by swapping each parameter's storage (`p.data`), so
every module, hook and bitsandbytes quant_state object stays the same Python object.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

GIB = 1 << 30
# Share of the free memory the AV's KV cache may use: the rest is for activations, allocator
# fragmentation and the CUDA graph pools; unparked, the AR also scores beside the AV's cache.
KV_SHARE_PARKED = 0.7  # 0.8 ran out on an H200 capped at 44 GiB (bench gpu, 2026-11-28)
KV_SHARE = 0.5
# Parking costs a few seconds (two copies of ~26 GiB over PCIe, pinning); it must save at
# least this many AV passes to be worth it.
MIN_PASSES_SAVED = 2
# Host memory that must stay free beside the parked weights (the OS, the app, the page cache).
HOST_RESERVE = 4 * GIB


@dataclass(frozen=True)
class ExplainPlan:
    park: bool
    batch: int
    reason: str
    cap: int = 160


def passes(rows: int, batch: int) -> int:
    return -(-rows // max(1, batch))


def rows_that_fit(free: int, per_row: int, cap: int, rows: int, share: float = KV_SHARE) -> int:
    """Rows per AV pass. fast_decode pads a pass to its batch bucket, so the bucket must fit too."""
    from .fast_decode import BATCH_BUCKETS, bucket_for

    fit = max(1, min(cap, int(free * share // max(1, per_row))))
    batch = min(fit, rows)
    if batch > 1 and bucket_for(batch) > fit:
        batch = max(b for b in BATCH_BUCKETS if b <= fit)
    return max(1, batch)


def plan_explain(rows: int, per_row: int, free: int, parkable: int, host_free: int | None,
                 cap: int = 160) -> ExplainPlan:
    """Whether to park, and the batch the memory free now allows (the engine re-measures after
    parking). `free`: bytes free on the AV's card; `parkable`: bytes of the subject's and AR's
    weights on that card; `host_free`: host memory available (None: unknown, do not park)."""
    here = rows_that_fit(free, per_row, cap, rows)
    if passes(rows, here) == 1:
        return ExplainPlan(False, here, "every row fits in one pass without parking", cap)
    if parkable <= 0:
        return ExplainPlan(False, here, "no other model shares the AV's card", cap)
    parked_batch = rows_that_fit(free + parkable, per_row, cap, rows, KV_SHARE_PARKED)
    saved = passes(rows, here) - passes(rows, parked_batch)
    if saved < MIN_PASSES_SAVED:
        return ExplainPlan(False, here, f"parking would save {saved} AV pass(es); not worth the copies", cap)
    if host_free is None or host_free < parkable + HOST_RESERVE:
        have = "unknown" if host_free is None else f"{host_free / GIB:.1f} GiB"
        return ExplainPlan(False, here, f"host memory too small to park {parkable / GIB:.1f} GiB "
                                             f"(available: {have})", cap)
    return ExplainPlan(True, parked_batch, f"parking {parkable / GIB:.1f} GiB: {passes(rows, here)} -> "
                                            f"{passes(rows, parked_batch)} AV passes", cap)


def host_available() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def free_bytes(device: torch.device) -> int:
    """What a new allocation on `device` can get (placement.capped_free)."""
    if device.type != "cuda":
        return 0
    from .placement import capped_free

    return capped_free(device.index if device.index is not None else torch.cuda.current_device())


def _params_on(models: Iterable, device: torch.device) -> list[torch.nn.Parameter]:
    seen, out = set(), []
    for m in models:
        for p in m.parameters():
            if id(p) not in seen and p.device == device:
                seen.add(id(p))
                out.append(p)
    return out


def bytes_on(models: Iterable, device: torch.device) -> int:
    return sum(p.numel() * p.element_size() for p in _params_on(models, device))


@contextlib.contextmanager
def parked(models: dict[str, object], device: torch.device, pin: bool | None = None,
           state: dict | None = None) -> Iterator[dict[str, int]]:
    """Move the parameters of `models` ({role: nn.Module}) that live on `device` to host memory
    (pinned on CUDA) for the duration of the block, and put them back after, however the block
    ends. Yields {role: bytes parked}. `state["parked"]` lists the parked roles while inside.
    Captured CUDA graphs of a parked model point at the old storage: the caller drops them."""
    cuda = device.type == "cuda"
    pin = (cuda if pin is None else pin) and _can_pin()
    # (parameter, its device storage until the parking is complete, then None)
    moved: list[list] = []
    registered: list[torch.Tensor] = []  # host copies pinned in place; alive until unpinned
    sizes: dict[str, int] = {}
    state = state if state is not None else {}
    try:
        seen: set[int] = set()
        for role, model in models.items():
            sizes[role] = 0
            for p in _params_on([model], device):
                if id(p) in seen:
                    continue
                seen.add(id(p))
                if pin and _RELEASE_PINNED is not None:  # torch's pinned allocator: fastest copies
                    host = torch.empty(p.data.shape, dtype=p.data.dtype, device="cpu", pin_memory=True)
                    pinned = True
                else:
                    host = torch.empty(p.data.shape, dtype=p.data.dtype, device="cpu")
                    pinned = pin and _register(host, registered)
                host.copy_(p.data, non_blocking=pinned)
                moved.append([p, p.data])
                sizes[role] += p.numel() * p.element_size()
                p.data = host
        if cuda:
            torch.cuda.synchronize(device)
        for rec in moved:  # the host copies are complete: let the card's storage go
            rec[1] = None
        if cuda:
            torch.cuda.empty_cache()
        state["parked"] = sorted(r for r, n in sizes.items() if n)
        yield sizes
    finally:
        for p, original in moved:
            # Parking failed half way: the original storage is still there; else copy back.
            p.data = original if original is not None else p.data.to(device, non_blocking=pin)
        if cuda:
            torch.cuda.synchronize(device)
            if pin and _RELEASE_PINNED is not None:
                _RELEASE_PINNED()  # hand the cached pinned blocks back to the OS
        for host in registered:  # the copies back are complete: unpin, then let them go
            torch.cuda.cudart().cudaHostUnregister(host.data_ptr())
        registered.clear()
        state["parked"] = []


# Pinned host memory. torch's pinned allocator (`pin_memory=True`) copies fastest (H200, 25.3
# GiB: park 12.6 s, unpark 0.5 s) but rounds blocks up to a power of two and keeps them cached
# (3.4 GiB parked held 4.9 GiB of RAM after), so it is used only where torch can release that
# cache (torch.accelerator.empty_host_cache, newer torch). Elsewhere each host copy is pinned in
# place with cudaHostRegister and unpinned after (park 17.3 s, unpark 1.9 s; nothing kept).
_RELEASE_PINNED = getattr(getattr(torch, "accelerator", None), "empty_host_cache", None)


def _register(host: torch.Tensor, registered: list[torch.Tensor]) -> bool:
    """Pin an ordinary host tensor in place (cudaHostRegister) for fast copies."""
    n = host.numel() * host.element_size()
    if n == 0:
        return False
    err = torch.cuda.cudart().cudaHostRegister(host.data_ptr(), n, 0)
    if int(getattr(err, "value", err)) != 0:
        return False  # pageable then: a slower copy, same result
    registered.append(host)  # kept alive: a non-blocking copy back reads it after p.data moves on
    return True


_PIN_OK: list[bool] = []


def _can_pin() -> bool:
    """Pinned memory needs a CUDA context; a failed pin falls back to pageable memory."""
    if not _PIN_OK:
        try:
            torch.empty(1, pin_memory=True)
            _PIN_OK.append(True)
        except RuntimeError:
            _PIN_OK.append(False)
    return _PIN_OK[0]
