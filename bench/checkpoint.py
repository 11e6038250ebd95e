"""Write a Gemma-3-shaped checkpoint with random weights to disk, as `save_pretrained` would.

Start-up and placement must be measured through the product's loading path
(`nla_tui.core.models.loading.load_model`), which reads a directory: so the shapes in shapes.py are
written out as bf16 safetensors shards plus an index, random values generated on the GPU.
The key names come from the model class itself (built on the meta device), so the layout is
exactly what transformers loads. Built like bench/shapes.py's random-weight models.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

GIB = 1 << 30


def _model_class(cfg):
    import transformers

    if getattr(cfg, "model_type", "") == "gemma3":  # multimodal wrapper (the released subject's layout)
        return transformers.Gemma3ForConditionalGeneration
    return transformers.AutoModelForCausalLM


def tensor_shapes(cfg) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """name -> (shape, dtype) of every saved tensor (tied weights once)."""
    cls = _model_class(cfg)
    with torch.device("meta"):
        model = cls.from_config(cfg) if hasattr(cls, "from_config") else cls(cfg)
    sd = model.state_dict()
    tied = {k for k in sd if k.endswith("lm_head.weight")} if getattr(
        getattr(cfg, "text_config", cfg), "tie_word_embeddings", True) else set()
    return {k: (tuple(v.shape), v.dtype) for k, v in sd.items() if k not in tied}


def checkpoint_bytes(cfg, dtype: torch.dtype = torch.bfloat16) -> int:
    size = torch.tensor([], dtype=dtype).element_size()
    n = 0
    for shape, _ in tensor_shapes(cfg).values():
        k = 1
        for s in shape:
            k *= s
        n += k
    return n * size


def shard_names(shapes: dict, elt: int, shard_bytes: int) -> list[list[str]]:
    """Tensor names split into files of at most shard_bytes (a tensor larger alone gets its own)."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, (shape, _) in shapes.items():
        nbytes = elt * int(torch.Size(shape).numel())
        if shards[-1] and used + nbytes > shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += nbytes
    return shards


@torch.no_grad()
def write_checkpoint(cfg, path: Path, device: str = "cuda", dtype: torch.dtype = torch.bfloat16,
                     shard_bytes: int = 4 * GIB, seed: int = 0) -> dict:
    """config.json + model-0000i-of-0000n.safetensors + index. Returns {bytes, files, seconds}."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    shapes = tensor_shapes(cfg)
    elt = torch.tensor([], dtype=dtype).element_size()
    shards = shard_names(shapes, elt, shard_bytes)
    gen = torch.Generator(device=device).manual_seed(seed)
    weight_map, total = {}, 0
    for i, names in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name in names:
            shape, _ = shapes[name]
            if len(shape) >= 2:
                t = torch.randn(shape, dtype=dtype, device=device, generator=gen) * 0.02
            else:  # Gemma norms are (1 + w): zeros are the identity; biases zero too
                t = torch.zeros(shape, dtype=dtype, device=device)
            tensors[name] = t.cpu()
            weight_map[name] = fname
            total += t.numel() * elt
        save_file(tensors, str(path / fname), metadata={"format": "pt"})
        del tensors
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    cfg.save_pretrained(str(path))
    with open(path / "config.json") as fh:  # load in the dtype the product asks for
        conf = json.load(fh)
    conf["torch_dtype"] = conf["dtype"] = str(dtype).removeprefix("torch.")
    (path / "config.json").write_text(json.dumps(conf, indent=1))
    return {"bytes": total, "files": len(shards) + 2, "seconds": round(time.perf_counter() - t0, 2)}


def drop_page_cache(path: Path) -> str:
    """Make the next read of `path` come from disk: fsync, then posix_fadvise(DONTNEED) on each
    file (clean pages of just these files leave the page cache; nothing else is touched)."""
    for f in Path(path).rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return "posix_fadvise"


def write_sparse_checkpoint(cfg, path: Path, dtype: torch.dtype = torch.bfloat16, shard_bytes: int = 4 * GIB) -> dict:
    """The same layout as write_checkpoint, every weight zero and every file sparse (a header,
    then a hole): a 27B-shaped source takes no disk, so three of them (145 GB of bf16) fit beside
    their pre-quantised copies on a 64 GiB disk. For timing starts from the quantised cache only:
    the cached copy is real data on disk, the source is read just for its identity."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    shapes = tensor_shapes(cfg)
    elt = torch.tensor([], dtype=dtype).element_size()
    code = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}[dtype]
    shards = shard_names(shapes, elt, shard_bytes)
    weight_map, total = {}, 0
    for i, names in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        header, off = {"__metadata__": {"format": "pt"}}, 0
        for name in names:
            shape, _ = shapes[name]
            n = elt * int(torch.Size(shape).numel())
            header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
            weight_map[name] = fname
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(path / fname, "wb") as fh:
            fh.write(len(raw).to_bytes(8, "little") + raw)
            fh.truncate(8 + len(raw) + off)
        total += off
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    cfg.save_pretrained(str(path))
    with open(path / "config.json") as fh:
        conf = json.load(fh)
    conf["torch_dtype"] = conf["dtype"] = str(dtype).removeprefix("torch.")
    (path / "config.json").write_text(json.dumps(conf, indent=1))
    return {"bytes": total, "files": len(shards) + 2, "seconds": round(time.perf_counter() - t0, 2)}
