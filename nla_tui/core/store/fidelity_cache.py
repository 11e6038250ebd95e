"""The fidelity self-check's results on disk, one small JSON file per models + precisions, so
the check runs once per model and precision (and the status line, exports and `run` can say
its verdict without running it).

    <cache root>/fidelity/v1/<sha256 of the key>.json

The key is every thing the result depends on: each checkpoint's name and revision (the
fingerprint of its files, fingerprint.py), the layer, the precision each model runs in, the
reference precision, the device kind and the check's version (CHECK_VERSION). Written to a
temp name and renamed (a reader sees a whole file or none); a file that does not parse is a
miss, and the check runs again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..fidelity_report import CHECK_VERSION, FidelityReport
from ..types import ModelInfo
from .session_files import _write_atomic as write_atomic  # the project's one atomic writer


def fidelity_key(info: ModelInfo, quants: dict[str, str], reference: str) -> str:
    ident = {"check_version": CHECK_VERSION, "layer": int(info.layer), "reference": reference,
             "device": info.device.split(":")[0], "quants": {r: quants.get(r) for r in ("subject", "av", "ar")},
             "models": {r: [getattr(info, r), (info.revision or {}).get(r)] for r in ("subject", "av", "ar")}}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def fidelity_dir(root: str | os.PathLike | None = None) -> Path:
    if root is None:
        from ...paths import cache_root

        root = cache_root()
    return Path(root).expanduser() / "fidelity" / "v1"


def read_report(key: str, root: str | os.PathLike | None = None) -> FidelityReport | None:
    path = fidelity_dir(root) / f"{key}.json"
    try:
        report = FidelityReport.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, RecursionError):
        return None  # missing or damaged: the caller runs the check
    return report if report.key == key and report.check_version == CHECK_VERSION else None


def write_report(report: FidelityReport, root: str | os.PathLike | None = None) -> Path:
    """Atomically (temp + fsync + rename + fsync of the directory); returns the file's path."""
    d = fidelity_dir(root)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{report.key}.json"
    write_atomic(path, json.dumps(report.to_json(), indent=1).encode("utf-8"))
    return path
