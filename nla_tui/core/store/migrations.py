"""Upgrades of older session.json documents, one schema version per step.

Loading migrates in memory only; the next save writes the current version. To change
the format: bump SCHEMA_VERSION in session_guard.py, add `_migrate_vN` here upgrading N to
N+1, register it in MIGRATIONS, and document it in docs/SESSION_SCHEMA.md.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable


def _migrate_v0(doc: dict[str, Any], directory: Path) -> dict[str, Any]:
    """v0: pre-release files with no schema_version (early `nla-tui run --out`): the
    conversation was called "messages", dates and name could be missing, and the
    activations sat in a fixed activations.safetensors."""
    doc = dict(doc)
    if "conversation" not in doc and "messages" in doc:
        doc["conversation"] = doc.pop("messages")
    mtime = datetime.fromtimestamp((directory / "session.json").stat().st_mtime, timezone.utc)
    doc.setdefault("created", mtime.isoformat(timespec="seconds"))
    doc.setdefault("updated", doc["created"])
    doc.setdefault("name", directory.name)
    doc.setdefault("explanations", [])
    if "activations_file" not in doc and (directory / "activations.safetensors").exists():
        doc["activations_file"] = "activations.safetensors"
    doc["schema_version"] = 1
    return doc


def _migrate_v1(doc: dict[str, Any], directory: Path) -> dict[str, Any]:
    """v1 -> v2: sessions gained `steered`, the list of steered continuations (issue 13)."""
    doc = dict(doc)
    doc.setdefault("steered", [])
    doc["schema_version"] = 2
    return doc


def _migrate_v2(doc: dict[str, Any], directory: Path) -> dict[str, Any]:
    """v2 -> v3: sessions gained `notes`, a researcher's notes on tokens, `branches`, the
    edited versions of the conversation, and `current_branch`, the one shown (issue 26); an
    older session has none of them and shows its root."""
    doc = dict(doc)
    doc.setdefault("notes", [])
    doc.setdefault("branches", [])
    doc.setdefault("current_branch", 0)
    doc["schema_version"] = 3
    return doc


# schema_version -> function upgrading a document of that version by one step.
MIGRATIONS: dict[int, Callable[[dict[str, Any], Path], dict[str, Any]]] = {0: _migrate_v0, 1: _migrate_v1, 2: _migrate_v2}
