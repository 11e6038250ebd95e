"""A second AV/AR pair for the extra-pair tests: the demo pair's av/ and ar/ directories
copied in the layout of a hub release (config.json, weights, tokenizer, nla_meta.yaml,
value_head.safetensors), weights hard-linked (copied where links are refused), with its
own label in the sidecar's training block, or a sidecar edited to make a bad pair."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def copy_demo_pair(demo_paths, dest: Path, label: str = "copy of the demo pair", **sidecar) -> dict[str, Path]:
    """dest/av and dest/ar; `sidecar` overrides top-level sidecar keys in both (e.g.
    extraction_layer_index=30, d_model=1024)."""
    out = {}
    for role in ("av", "ar"):
        target = Path(dest) / role
        shutil.copytree(demo_paths[role], target, copy_function=_link_or_copy)
        meta_path = target / "nla_meta.yaml"
        meta_path.unlink()  # a hard link: write a new file, never through it
        meta = yaml.safe_load((Path(demo_paths[role]) / "nla_meta.yaml").read_text("utf-8"))
        if isinstance(meta.get("training"), dict):
            meta["training"] = {**meta["training"], "label": label}
        meta.update(sidecar)
        if "extraction_layer_index" in sidecar and isinstance(meta.get("critic"), dict):
            meta["critic"] = {**meta["critic"], "extraction_layer_index": sidecar["extraction_layer_index"]}
        meta_path.write_text(yaml.safe_dump(meta, allow_unicode=True, sort_keys=False), encoding="utf-8")
        out[role] = target
    return out
