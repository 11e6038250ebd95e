"""Find checkpoints (local dir or HF cache) and load them in the requested precision.

One path for everything: the released hub pairs, local directories, and the demo pair
nla-tui builds itself all go through `resolve_checkpoint` and `load_model`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .chat_template import ensure_chat_template
from ..errors import CheckpointError, NlaError

QUANTS = ("nf4", "int4", "int8", "bf16", "fp32")
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint on local disk."""

    name: str  # what the user gave (hub id or path)
    path: Path
    revision: str | None  # hub commit, or a digest of the local config + weight index

    @property
    def identity(self) -> str:
        return f"{self.name}@{self.revision}"


def _local_revision(path: Path) -> str:
    """Every file that shapes the output, weights and value head included (fingerprint.py)."""
    from ..fingerprint import checkpoint_digest

    return "local-" + checkpoint_digest(path)[:16]


def _download_hint(repo: str) -> str:
    gated = repo.startswith(("google/", "meta-llama/")) or "gemma" in repo.lower() or "llama" in repo.lower()
    hint = (f"Download it on a machine with internet access: `huggingface-cli download {repo}` "
            f"(or `hf download {repo}`), then copy the HF cache (HF_HOME, now "
            f"{os.environ.get('HF_HOME', '~/.cache/huggingface')}) here, or pass a local directory instead.")
    if gated:
        hint += (f" This repo is gated: accept the licence at https://huggingface.co/{repo} and set "
                 f"HF_TOKEN to a token with read access before downloading.")
    return hint


def resolve_checkpoint(name: str | Path) -> Checkpoint:
    """A local directory, or a hub id looked up in the HF cache (downloading only if
    the hub is reachable and HF_HUB_OFFLINE is not set). Never a stack trace."""
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise CheckpointError(f"{p} has no config.json: not a Hugging Face model directory.")
        return Checkpoint(str(name), p.resolve(), _local_revision(p))
    s = str(name)
    if s.startswith((".", "/", "~")) or s.count("/") != 1:
        raise NlaError(f"{s!r} is neither an existing directory nor a hub id of the form owner/name.")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        raise NlaError("huggingface_hub is missing; reinstall nla-tui.") from None
    try:
        local = snapshot_download(s, allow_patterns=["*.json", "*.safetensors", "*.yaml", "*.model", "*.jinja", "*.txt"])
    except GatedRepoError:
        raise NlaError(f"{s} is a gated model and this machine has no access to it. {_download_hint(s)}") from None
    except RepositoryNotFoundError:
        raise NlaError(f"{s} does not exist on the hub (or is private). Check the id. {_download_hint(s)}") from None
    except Exception as e:  # offline, no cache entry, network down: all the same to the user
        raise NlaError(f"{s} is not in the local Hugging Face cache and could not be downloaded "
                       f"({type(e).__name__}). {_download_hint(s)}") from None
    path = Path(local)
    return Checkpoint(s, path, path.name if len(path.name) == 40 else _local_revision(path))


def load_tokenizer(ckpt: Checkpoint):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(ckpt.path))
    except Exception as e:
        raise CheckpointError(f"Could not load the tokenizer of {ckpt.name} ({e}). "
                              f"The directory needs tokenizer.json / tokenizer_config.json.") from None
    ensure_chat_template(tok)
    return tok


# Every file AutoTokenizer may read: checkpoints whose copies of these are byte-identical
# load to tokenizers that behave identically.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "added_tokens.json", "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt")


def tokenizer_digest(ckpt: Checkpoint) -> str:
    h = hashlib.sha256()
    for name in TOKENIZER_FILES:
        f = ckpt.path / name
        h.update(name.encode() + (b"\0" + f.read_bytes() if f.is_file() else b"\1"))
    return h.hexdigest()


def load_tokenizers(ckpts: dict[str, Checkpoint]) -> dict[str, Any]:
    """One tokenizer per role, loaded once per distinct set of tokenizer files. The demo's
    subject, AV and AR (and a hub pair built on its subject) ship the same files, and each
    load of Gemma 3's 262k-token tokenizer takes ~6 s on 2 cores. Shared objects are safe:
    nothing changes a tokenizer after load (ensure_chat_template runs inside it)."""
    by_digest: dict[str, Any] = {}
    out = {}
    for role, ckpt in ckpts.items():
        key = tokenizer_digest(ckpt)
        if key not in by_digest:
            by_digest[key] = load_tokenizer(ckpt)
        out[role] = by_digest[key]
    return out


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_quant(device: str) -> str:
    # nf4 is the product's choice on a GPU (three 27B models in ~41 GiB); on CPU the
    # demo is small and fp32 is both faster and exact.
    return "nf4" if device.startswith("cuda") else "fp32"


def _quant_kwargs(quant: str, device: str) -> dict[str, Any]:
    if quant not in QUANTS:
        raise NlaError(f"Unknown --quant {quant!r}; choose one of {', '.join(QUANTS)}.")
    compute = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if quant == "nf4":
        from transformers import BitsAndBytesConfig

        return {"quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute,
            llm_int8_skip_modules=["lm_head", "multi_modal_projector", "vision_tower"]), "dtype": compute}
    if quant == "int8":
        from transformers import BitsAndBytesConfig

        return {"quantization_config": BitsAndBytesConfig(
            load_in_8bit=True, llm_int8_skip_modules=["lm_head", "multi_modal_projector", "vision_tower"]),
            "dtype": compute}
    if quant == "int4":  # loaded in the compute dtype on the host, quantised layer by layer (int4.py)
        return {"dtype": compute}
    return {"dtype": torch.bfloat16 if quant == "bf16" else torch.float32}


def is_multimodal(config) -> bool:
    return hasattr(config, "text_config") and getattr(config, "model_type", "") == "gemma3"


def quiet_library_progress() -> None:
    """nla-tui reports loading itself (`[subject] 40% …` lines, the TUI's status line):
    transformers' own tqdm bars ("Loading weights") would interleave with those on stderr
    and draw over the TUI. Hub download bars are huggingface_hub's and stay."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_model(ckpt: Checkpoint, quant: str, device: str, device_map: Any = None, max_memory: Any = None,
               quant_cache=None, progress: Callable[[float, str], None] | None = None):
    """Load a causal LM, text-only or Gemma 3's multimodal wrapper, in `quant`.

    With a `quant_cache` (quant_cache.QuantCache), an nf4/int8 model is read from its
    pre-quantised copy when there is one, and saved there after quantising when there is not."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from .quant_cache import load_cached
    from .weights_header import refuse_pickle_checkpoint

    refuse_pickle_checkpoint(Path(ckpt.path))
    quiet_library_progress()
    try:
        config = AutoConfig.from_pretrained(str(ckpt.path))
    except Exception as e:
        raise CheckpointError(f"{ckpt.name}: config.json could not be read ({e}).") from None
    if is_multimodal(config):
        from transformers import Gemma3ForConditionalGeneration as cls
    else:
        cls = AutoModelForCausalLM
    kwargs = _quant_kwargs(quant, device)
    kwargs["device_map"] = device_map if device_map is not None else {"": device}
    kwargs["use_safetensors"] = True  # never a pickle file, whatever else the folder holds
    if max_memory is not None:
        kwargs["max_memory"] = max_memory
    if quant == "int4":
        from . import int4

        target = int4.single_device(kwargs["device_map"], device, ckpt.name)
        kwargs["device_map"] = {"": "cpu"}  # the bf16 model never sits whole on the card
        kwargs.pop("max_memory", None)

    def int4_load(cached: str | None):
        if cached is not None:
            return int4.load_quantised(cls, cached, target, kwargs["dtype"])
        model = cls.from_pretrained(str(ckpt.path), **kwargs)
        int4.quantize_model(model, target)
        return model.to(target)

    def from_pretrained(cached: str | None):
        # A cached entry is already quantised: its config.json carries the quantization_config.
        kw = kwargs if cached is None else {k: v for k, v in kwargs.items() if k != "quantization_config"}
        try:
            if quant == "int4":
                return int4_load(cached)
            return cls.from_pretrained(cached or str(ckpt.path), **kw)
        except torch.cuda.OutOfMemoryError:
            raise NlaError(f"Out of GPU memory loading {ckpt.name} in {quant}. Try --quant nf4, "
                           f"fewer models per card (--devices), or a smaller preset.") from None
        except (OSError, ValueError, KeyError) as e:
            if cached is not None:
                raise  # quant_cache discards the entry and loads the checkpoint instead
            raise CheckpointError(f"Could not load the weights of {ckpt.name} ({type(e).__name__}: {e}).") from None

    dtype = str(kwargs["dtype"]).removeprefix("torch.")
    model = load_cached(ckpt, quant, dtype, from_pretrained, quant_cache, progress, _log.warning)
    if quant == "int4":
        from .int4 import use_kernel

        use_kernel(model)  # after the cache saved the portable format
    model.eval()
    model.requires_grad_(False)
    return model


def text_parts(model):
    """(decoder, lm_head) for both Gemma3ForCausalLM and the multimodal wrapper.
    decoder has .layers, .norm and .embed_tokens (scaled by √d for Gemma)."""
    inner = model.model
    decoder = getattr(inner, "language_model", inner)
    return decoder, model.get_output_embeddings()


def text_config(model):
    cfg = model.config
    return cfg.text_config if is_multimodal(cfg) else cfg


def model_device(model) -> torch.device:
    return model.get_input_embeddings().weight.device


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))
