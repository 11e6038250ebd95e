"""A model loaded in the reference precision for the fidelity self-check, within whatever
memory is left beside the running models.

Two things keep the 27B reference within a 48 GB card that already holds three nf4 models:
- Only the layers the check reads are built: layer K's activation depends on layers 0..K
  alone, so the config is cut to K+1 layers (the checkpoint's later layers are never read).
- accelerate places the rest layer by layer: the card's free memory first (minus a margin
  for the activations), then host memory, then a temporary folder on disk; an offloaded
  layer is copied to the card when it runs and dropped after (accelerate's AlignDevicesHook).
  Slow for the offloaded part, but the check runs once per model and precision.

`budget` forces a small memory budget (tests, benchmarks): bytes for the execution device
(the card, or host memory on CPU); the rest goes to disk.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from ..errors import CheckpointError, NlaError
from .loading import Checkpoint, is_multimodal, quiet_library_progress, text_parts

GPU_MARGIN = 2 << 30  # left free on the card for the check's activations and the running models' work
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass
class Reference:
    model: Any
    placement: str  # "cuda:0 30 layers · cpu 12 · disk 0"
    device_map: dict[str, Any]


def host_available() -> int:
    """Bytes of host memory available now (MemAvailable), 0 if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def memory_plan(device: str, budget: int | None) -> dict[Any, int] | None:
    """accelerate's max_memory for the reference: None = everything on `device` (CPU, no budget)."""
    if device.startswith("cuda"):
        from .placement import capped_free

        index = torch.device(device).index or 0
        gpu = budget if budget is not None else max(0, capped_free(index) - GPU_MARGIN)
        return {index: int(gpu), "cpu": int(host_available() * 0.8)}
    return None if budget is None else {"cpu": int(budget)}


def _truncated_config(ckpt: Checkpoint, keep_layers: int):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(ckpt.path))
    text = config.text_config if is_multimodal(config) else config
    if keep_layers < text.num_hidden_layers:
        text.num_hidden_layers = keep_layers
        if isinstance(getattr(text, "layer_types", None), list):
            text.layer_types = text.layer_types[:keep_layers]
    return config


def _describe(device_map: dict[str, Any]) -> str:
    counts: dict[str, int] = {}
    for name, where in device_map.items():
        if ".layers." in f".{name}." or name.endswith(".layers"):
            key = f"cuda:{where}" if isinstance(where, int) else str(where)
            counts[key] = counts.get(key, 0) + 1
    if not counts:  # a whole-model map ({"": device})
        return ", ".join(sorted({f"cuda:{w}" if isinstance(w, int) else str(w) for w in device_map.values()}))
    return " · ".join(f"{k} {n} layers" for k, n in counts.items())


@contextlib.contextmanager
def reference_model(ckpt: Checkpoint, precision: str, device: str, keep_layers: int,
                    budget: int | None = None) -> Iterator[Reference]:
    """Load `ckpt`'s first `keep_layers` decoder layers in `precision`, placed within the memory
    left (module docstring); freed, and its offload folder deleted, on exit."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    if precision not in DTYPES:
        raise NlaError(f"Reference precision {precision!r} is not one of {', '.join(DTYPES)}.")
    config = _truncated_config(ckpt, keep_layers)
    if is_multimodal(config):
        from transformers import Gemma3ForConditionalGeneration as cls
    else:
        cls = AutoModelForCausalLM
    max_memory = memory_plan(device, budget)
    quiet_library_progress()
    with tempfile.TemporaryDirectory(prefix="nla-tui-reference-") as offload:
        kwargs: dict[str, Any] = {"config": config, "dtype": DTYPES[precision], "use_safetensors": True}
        if max_memory is None:
            kwargs["device_map"] = {"": device}
        else:
            kwargs.update(device_map="sequential", max_memory=max_memory, offload_folder=offload,
                          offload_state_dict=True)
        level, acc_log = hf_logging.get_verbosity(), logging.getLogger("accelerate")
        acc_level = acc_log.level
        # The later layers left unread are reported as "unexpected" keys, offloading as a warning.
        hf_logging.set_verbosity_error()
        acc_log.setLevel(logging.ERROR)
        try:
            model = cls.from_pretrained(str(ckpt.path), **kwargs)
        except torch.cuda.OutOfMemoryError:
            raise NlaError(f"Out of GPU memory loading the {precision} reference of {ckpt.name}. Free GPU "
                           f"memory or close other programs on the card.") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"Could not load the {precision} reference of {ckpt.name} "
                                  f"({type(e).__name__}: {str(e)[:200]}).") from None
        finally:
            hf_logging.set_verbosity(level)
            acc_log.setLevel(acc_level)
        model.eval()
        model.requires_grad_(False)
        device_map = dict(getattr(model, "hf_device_map", None) or {"": device})
        try:
            yield Reference(model, _describe(device_map), device_map)
        finally:
            del model
            import gc

            gc.collect()
            if device.startswith("cuda"):
                torch.cuda.empty_cache()


class _Stop(Exception):
    """Raised by the layer-K hook: nothing after layer K is needed."""


@torch.inference_mode()
def layer_activations(model, layer: int, ids: list[int], device: str | torch.device) -> np.ndarray:
    """Layer K's residual output at every position ([T, d] float32), one plain forward pass
    stopped after layer K (the same computation for the running and the reference model).
    `device`: where the inputs go (the embedding's card; an offloaded model's main device)."""
    decoder, _ = text_parts(model)
    got: dict[str, torch.Tensor] = {}

    def hook(_mod, _inp, out):
        got["h"] = (out[0] if isinstance(out, tuple) else out).detach()
        raise _Stop

    handle = decoder.layers[layer].register_forward_hook(hook)
    try:
        decoder(input_ids=torch.tensor([ids], device=device), use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    if "h" not in got:
        raise NlaError(f"Layer {layer} did not run: the model has {len(decoder.layers)} layers.")
    return got["h"][0].float().cpu().numpy()
