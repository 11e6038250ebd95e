"""The engine's fidelity self-check: cached per models + precisions, so it runs once
(core/nla/fidelity.py computes it, core/store/fidelity_cache.py keeps it). Its verdict goes
onto the engine's ModelInfo, which is what the status line, `run` and every export read."""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from typing import Callable

from ..fidelity_report import FidelityReport, reference_precision
from ..store.fidelity_cache import fidelity_key, read_report, write_report

Progress = Callable[[str], None]


def _key(engine) -> str:
    info = engine.info
    return fidelity_key(info, info.quants, reference_precision(info.device))


def _caching(engine) -> bool:
    return engine.caches.activations is not None  # --no-cache / NLA_TUI_NO_CACHE turn every cache off


def apply_verdict(engine, report: FidelityReport) -> None:
    engine.info.fidelity = report.verdict()
    engine.info.fidelity_drifts = report.drifts


def note_cached_verdict(engine) -> FidelityReport | None:
    """After load: the verdict of an earlier check of these models and precisions, if any."""
    if engine.info is None or not engine.info.quants or not _caching(engine):
        return None
    report = read_report(_key(engine), engine.options.cache_dir)
    if report is not None:
        apply_verdict(engine, report)
    return report


def check_fidelity(engine, with_open: bool = True, recheck: bool = False, positions: int | None = None,
                   tokens: int | None = None, budget: int | None = None, progress: Progress | None = None,
                   cancel: threading.Event | None = None) -> tuple[FidelityReport, bool]:
    """(report, came from the cache). Runs the check unless a cached one exists (or `recheck`);
    `with_open` adds the engine's open conversation (read up to SESSION_TOKENS tokens)."""
    from ..nla import fidelity as fid

    engine._need_models()
    key = _key(engine)
    if not recheck and _caching(engine):
        cached = read_report(key, engine.options.cache_dir)
        if cached is not None:
            apply_verdict(engine, cached)
            return cached, True
    n = positions if positions is not None else fid.POSITIONS
    ids, _, _ = engine.subject.tokenize(fid.FIXED_CONVERSATION)
    conversations = [("fixed conversation", ids, n)]
    if with_open and engine.tokens:
        conversations.append(("open session", [t.token_id for t in engine.tokens][:fid.SESSION_TOKENS],
                              max(1, n // 2)))
    info = engine.info
    report = fid.run_check(engine.subject, engine.av, engine.ar, engine.checkpoints["subject"],
                           engine.checkpoints["ar"], info.quants, reference_precision(info.device), info.device,
                           conversations, tokens or fid.EXPLAIN_TOKENS, budget, progress, cancel)
    report.key = key
    report.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if _caching(engine):
        write_report(report, engine.options.cache_dir)
    apply_verdict(engine, report)
    return report, False
