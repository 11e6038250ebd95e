"""Explain-all memory: park the subject and the AR in host memory while the AV runs.

During explain-all only the AV works; on one 48 GB card the subject (15 GiB nf4) and the AR
(11 GiB) leave the AV's KV cache room for ~8 rows, and 150 explanations take 19 passes
(BENCHMARKS.md: 204 s). Moving their weights to pinned host memory for the AV phase frees that room
for one or two large batches; they come back after, also when explain-all is cancelled or fails.

`plan_explain` is the decision, pure arithmetic over byte counts (tested without a GPU);
`parked` does the moving. Weights move by swapping each parameter's storage (`p.data`), so
every module, hook and bitsandbytes quant_state object stays the same Python object.
"""

from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from ..errors import NlaError

GIB = 1 << 30
# Share of the free memory the AV's KV cache may use: the rest is for activations, allocator
# fragmentation and the CUDA graph pools; unparked, the AR also scores beside the AV's cache.
KV_SHARE_PARKED = 0.75  # 0.8 ran out on an H200 at 44 GiB (2026-11-28); at 0.7 150 rows missed bucket 160 by one row (H100, issue 24)
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


class UnparkError(NlaError):
    """A parked model could not come back to its card. Every parameter of it is still in host
    memory (never half moved); the engine tries again before the model is next used."""


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e))


def _device_empty(like: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The destination of one parameter on the card (one place to inject a failure in tests)."""
    return torch.empty(like.shape, dtype=like.dtype, device=device)


class Parking:
    """The parameters of some models moved to host memory, and the way back.

    `park` moves every parameter of the given models that lives on `device` to host memory (pinned
    on CUDA). `unpark` brings them back one model at a time, all of a model or none of it: its
    destinations on the card are all allocated (largest first, after the allocator's cache is
    emptied) before any parameter is switched over, so an allocation failure leaves that model
    wholly in host memory, consistent and usable again once `unpark` succeeds. Weights move by
    swapping each parameter's storage (`p.data`), so every module, hook and bitsandbytes
    quant_state object stays the same Python object."""

    def __init__(self, device: torch.device, pin: bool | None = None):
        self.device = device
        self.cuda = device.type == "cuda"
        self.pin = (self.cuda if pin is None else pin) and _can_pin()
        # role -> [(parameter, its device storage until the parking is complete, then None)]
        self.moved: dict[str, list[list]] = {}
        self.registered: list[torch.Tensor] = []  # host copies pinned in place; alive until unpinned
        self.sizes: dict[str, int] = {}
        self.attempts = 0

    @property
    def parked_roles(self) -> list[str]:
        return sorted(r for r, recs in self.moved.items() if recs and self.sizes.get(r))

    def park(self, models: dict[str, object]) -> dict[str, int]:
        seen: set[int] = set()
        for role, model in models.items():
            self.sizes[role] = 0
            recs = self.moved.setdefault(role, [])
            for p in _params_on([model], self.device):
                if id(p) in seen:
                    continue
                seen.add(id(p))
                if self.pin and _RELEASE_PINNED is not None:  # torch's pinned allocator: fastest copies
                    host = torch.empty(p.data.shape, dtype=p.data.dtype, device="cpu", pin_memory=True)
                    pinned = True
                else:
                    host = torch.empty(p.data.shape, dtype=p.data.dtype, device="cpu")
                    pinned = self.pin and _register(host, self.registered)
                host.copy_(p.data, non_blocking=pinned)
                recs.append([p, p.data])
                self.sizes[role] += p.numel() * p.element_size()
                p.data = host
        if self.cuda:
            torch.cuda.synchronize(self.device)
        for recs in self.moved.values():  # the host copies are complete: let the card's storage go
            for rec in recs:
                rec[1] = None
        if self.cuda:
            torch.cuda.empty_cache()
        return dict(self.sizes)

    def _bring_back(self, recs: list[list]) -> None:
        """All of one model's parameters back on the card, or (on an allocation failure) none."""
        if all(orig is not None for _, orig in recs):  # parking stopped before the copies were done
            for p, orig in recs:
                p.data = orig
            return
        order = sorted(range(len(recs)), key=lambda i: -recs[i][0].data.numel() * recs[i][0].data.element_size())
        dest: dict[int, torch.Tensor] = {}
        for i in order:  # largest first, while the free memory is least cut up
            dest[i] = _device_empty(recs[i][0].data, self.device)
        for i in order:
            dest[i].copy_(recs[i][0].data, non_blocking=self.pin)
        for i, (p, _) in enumerate(recs):
            p.data = dest[i]

    def unpark(self) -> None:
        """Bring every parked model back. Raises UnparkError (after putting back whatever fits)
        when a model does not fit on its card even after the allocator's cache is emptied and
        expandable segments are switched on; that model then stays wholly in host memory."""
        self.attempts += 1
        if self.cuda:
            gc.collect()  # dropped graphs and KV caches: their blocks go back to the allocator
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()  # cached free blocks must not count against a memory cap
        failed: dict[str, str] = {}
        for role in sorted(self.moved):
            recs = self.moved[role]
            if not recs:
                continue
            for attempt in range(2):
                try:
                    self._bring_back(recs)
                except (torch.OutOfMemoryError, RuntimeError) as e:
                    if not _is_oom(e):
                        raise
                    failed[role] = str(e).split("\n")[0][:200]
                else:
                    self.moved[role] = []
                    failed.pop(role, None)
                    break
                # Outside the handler, so the traceback no longer holds the half-allocated
                # destinations: free them, then try once more with expandable segments.
                if attempt == 0 and self.cuda:
                    gc.collect()
                    _expandable_segments()
                    torch.cuda.empty_cache()
        if self.cuda:
            torch.cuda.synchronize(self.device)
        if failed:
            # Nothing stays pinned: what is still parked goes on in ordinary host memory.
            self._unpin()
            still = {r: self.sizes.get(r, 0) for r in failed}
            free = f"{free_bytes(self.device) / GIB:.1f} GiB free; " if self.cuda else ""
            raise UnparkError(
                "Explain-all could not bring " + " and ".join(f"the {r} ({n / GIB:.1f} GiB)" for r, n in still.items())
                + f" back to {self.device} after parking it in host memory: out of GPU memory "
                f"({free}{next(iter(failed.values()))}). "
                f"{'It stays' if len(still) == 1 else 'They stay'} whole in host memory and nla-tui tries again "
                "before the next chat, explanation or score; close other programs using that GPU, or restart "
                "nla-tui, if it keeps failing. Use --park never to keep models on the card during explain-all.")
        if self.cuda and self.pin and _RELEASE_PINNED is not None:
            _RELEASE_PINNED()  # hand the cached pinned blocks back to the OS
        self._unpin()

    def _unpin(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        for host in self.registered:  # the copies back are complete: unpin, then let them go
            torch.cuda.cudart().cudaHostUnregister(host.data_ptr())
        self.registered.clear()


def _expandable_segments() -> None:
    """Let new allocator segments grow and shrink page by page, so that memory trapped in
    half-used segments does not block a large tensor. Only when the user set no allocator
    config of their own (PYTORCH_CUDA_ALLOC_CONF) and this torch can change it at run time."""
    if os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF"):
        return
    setter = getattr(torch.cuda.memory, "_set_allocator_settings", None)
    if setter is not None:
        with contextlib.suppress(Exception):
            setter("expandable_segments:True")


def ensure_unparked(state: dict) -> None:
    """Before a model is used: bring back whatever an earlier explain-all could not (UnparkError
    if it still cannot)."""
    pending = state.get("pending")
    if pending is None:
        return
    pending.unpark()
    state["pending"] = None
    state["parked"] = []


@contextlib.contextmanager
def parked(models: dict[str, object], device: torch.device, pin: bool | None = None,
           state: dict | None = None) -> Iterator[dict[str, int]]:
    """Move the parameters of `models` ({role: nn.Module}) that live on `device` to host memory
    (pinned on CUDA) for the duration of the block, and put them back after, however the block
    ends. Yields {role: bytes parked}. `state["parked"]` lists the parked roles while inside, and
    after a failed return (UnparkError) `state["pending"]` holds what `ensure_unparked` retries.
    Captured CUDA graphs of a parked model point at the old storage: the caller drops them."""
    state = state if state is not None else {}
    parking = Parking(device, pin)
    try:
        sizes = parking.park(models)
        state["parked"] = parking.parked_roles
        yield sizes
    finally:
        try:
            parking.unpark()
        except UnparkError:
            state["pending"] = parking
            state["parked"] = parking.parked_roles
            raise
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
