"""Capture the AV's batch-1 decode graph while the next model loads (issue 24, part 4).

A start from the pre-quantised cache reads three models from disk back to back (33.2 s for the
27B trio on an H100) and then captures the AV's decode graph (3.5 s: the fused norms' compile
plus the capture), so the first explanation does not pay for it. The capture needs only the AV;
loading the AR needs only the disk and the copy engine. Capturing in a thread while the AR loads
hides the capture behind the reads. Loading releases the GIL inside its reads and copies, and
fast_decode captures on a side stream of its own with `capture_error_mode="thread_local"`, so the
loading thread's allocations and copies on the default stream stay outside the graph.

Only on CUDA (on the CPU there is no graph to capture). NLA_TUI_PRECAPTURE=0 turns it off. A
capture that fails here is not kept: the runner is dropped, so the first explanation captures
again on its own thread instead of decoding eagerly for the rest of the session.
"""

from __future__ import annotations

import logging
import os
import threading
import time

log = logging.getLogger(__name__)


def enabled() -> bool:
    return os.environ.get("NLA_TUI_PRECAPTURE", "1") != "0"


class BackgroundCapture:
    """fast_decode.warmup(model, [1], max_len) on a thread; join() waits and reports."""

    def __init__(self, model, max_len: int):
        self.model, self.max_len = model, max_len
        self.seconds: float | None = None
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="nla-av-precapture", daemon=True)

    def start(self) -> "BackgroundCapture":
        self._thread.start()
        return self

    def _run(self) -> None:
        from . import fast_decode

        t = time.perf_counter()
        try:
            fast_decode.warmup(self.model, [1], max_len=self.max_len)
            runner = fast_decode.captured_runner(self.model, 1, self.max_len)
            if runner is not None and runner.graph_error is not None:
                self.error = runner.graph_error
                fast_decode.clear(self.model)  # capture again on first use, never eager for good
        except Exception as e:  # a start must not fail because a head start failed
            self.error = f"{type(e).__name__}: {e}"
            try:
                fast_decode.clear(self.model)
            except Exception:
                pass
        self.seconds = time.perf_counter() - t

    def join(self) -> "BackgroundCapture":
        self._thread.join()
        if self.error is not None:
            log.warning("capturing the AV's decode graph during start-up failed (%s); the first explanation "
                        "captures it instead", self.error)
        return self


def start(model, max_len: int) -> BackgroundCapture | None:
    """Begin capturing `model`'s batch-1 decode graph for prompts + new tokens up to `max_len`;
    None where there is nothing to capture (not on CUDA) or NLA_TUI_PRECAPTURE=0."""
    if not enabled():
        return None
    dev = model.get_input_embeddings().weight.device
    if dev.type != "cuda":
        return None
    return BackgroundCapture(model, max_len).start()
