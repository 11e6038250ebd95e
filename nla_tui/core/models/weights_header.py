"""Read a checkpoint's safetensors headers (tensor names, shapes, dtypes) without
loading a single weight: `nla-tui check` uses them to catch a truncated or foreign
weights file in milliseconds, even for 70B, and the cache fingerprints use them too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, brief

MAX_HEADER = 100 << 20  # safetensors caps headers at 100 MB
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _check_entry(name: str, t: Any) -> None:
    """One tensor's entry: what summarize and the fingerprints read must have its type."""
    if not (isinstance(t, dict) and isinstance(t.get("dtype"), str) and isinstance(t.get("shape"), list)
            and all(_is_count(d) for d in t["shape"]) and isinstance(t.get("data_offsets"), list)
            and len(t["data_offsets"]) == 2 and all(_is_count(o) for o in t["data_offsets"])):
        raise ValueError(f"tensor {brief(name)} has a malformed entry {brief(t)} (expected dtype, shape as a "
                         "list of sizes and two data_offsets)")


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def refuse_pickle_checkpoint(root: Path) -> None:
    """A checkpoint with pickle weights (pytorch_model.bin) and no safetensors is refused
    before anything reads it: unpickling runs code the file chooses."""
    if any(root.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in root.iterdir() if p.suffix in PICKLE_SUFFIXES) if root.is_dir() else []
    if pickled:
        raise CheckpointError(
            f"{root} holds pickle weights ({', '.join(pickled[:3])}) and no .safetensors file. nla-tui never "
            "loads pickle files (loading one runs code it contains). Convert it where you trust the file: "
            "python -c \"from transformers import AutoModelForCausalLM as M; "
            "M.from_pretrained('IN').save_pretrained('OUT', safe_serialization=True)\", then copy the "
            "tokenizer files and nla_meta.yaml beside it and point nla-tui at OUT.")


def read_header(path: Path) -> dict[str, Any]:
    """{tensor name: {"dtype", "shape", "data_offsets"}} of one safetensors file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if not 2 <= n <= min(MAX_HEADER, size - 8):
                raise ValueError(f"header length {n} does not fit a {size}-byte file")
            header = json.loads(fh.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        header.pop("__metadata__", None)
        for name, t in header.items():
            _check_entry(name, t)
        end = max((int(t["data_offsets"][1]) for t in header.values()), default=0)
        if 8 + n + end > size:
            raise ValueError(f"the tensors need {8 + n + end} bytes, the file has {size} (truncated)")
    except (OSError, ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}). It is corrupted "
                              f"or truncated: re-download the checkpoint.") from None
    return header


def weight_files(root: Path) -> list[Path]:
    """The weights of a checkpoint directory: the shards its index names, else model.safetensors."""
    refuse_pickle_checkpoint(root)
    index = root / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index} is unreadable ({brief(e)}); re-download the checkpoint.") from None
        # Every shard must be a file in the checkpoint's own folder: an index naming
        # ../../etc/passwd must not make `check` read outside it.
        bad = [n for n in names if not isinstance(n, str) or Path(n).name != n or n in ("", ".", "..")
               or not n.endswith(".safetensors")]
        if bad:
            raise CheckpointError(f"{index} names {brief(bad[0])} as a weight file; shards must be .safetensors "
                                  "files in the checkpoint's own folder. Re-download the checkpoint.")
        files = [root / n for n in names]
    else:
        files = [root / "model.safetensors"]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"{root} is missing weight file(s) {', '.join(missing[:3])}: the download "
                              f"is incomplete. Re-download the checkpoint.")
    return files


def checkpoint_tensors(root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in weight_files(root):
        out.update(read_header(f))
    return out


def summarize(tensors: dict[str, Any]) -> tuple[int | None, int]:
    """(embedding width, number of decoder layers) as the weights (not the config) say."""
    width = None
    for name, t in tensors.items():
        if name.endswith("embed_tokens.weight") and len(t.get("shape", [])) == 2 and "vision" not in name:
            width = int(t["shape"][1])
            break
    layers = {int(m.group(1)) for name in tensors if "vision" not in name
              for m in [_LAYER.search(name)] if m}
    return width, (max(layers) + 1 if layers else 0)
