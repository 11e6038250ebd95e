"""The Activation Reconstructor: explanation text back to a vector, and the score.

Backbone = the AR checkpoint's K+1 decoder blocks (its config.json already has them),
final norm replaced by identity, no lm_head; value_head = Linear(d, d, bias=False)
from value_head.safetensors, applied to the LAST token's hidden state. The prompt is
tokenized WITH <bos> (the Gemma/Llama ARs were trained that way).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError, InputError
from ..models.loading import model_device, text_config, text_parts
from .sidecar import NlaMeta, validate_ar
from ..types import Score


def score_vectors(pred: np.ndarray, gold: np.ndarray, mse_scale: float, variance: float | None) -> Score:
    """Both scaled to L2 = mse_scale, so mse_nrm = mean((p̂ − ĝ)²) = 2(1 − cos) when
    mse_scale = √d; fve_nrm = 1 − mse_nrm / variance (None without a baseline)."""
    p = np.asarray(pred, dtype=np.float64)
    g = np.asarray(gold, dtype=np.float64)
    pn = p / max(np.linalg.norm(p), 1e-12) * mse_scale
    gn = g / max(np.linalg.norm(g), 1e-12) * mse_scale
    mse = float(np.mean((pn - gn) ** 2))
    cos = float(pn @ gn / (np.linalg.norm(pn) * np.linalg.norm(gn)))
    fve = None if not variance else 1.0 - mse / variance
    return Score(cos=cos, mse_nrm=mse, fve_nrm=fve)


def read_value_head(root: Path, d: int) -> torch.Tensor:
    """The AR's value head weight as float32 [d, d], checked: present, readable, one
    tensor 'weight' of that shape, every value finite. Anything else is a CheckpointError
    naming the file (`nla-tui check` calls this too: the head is small)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(root) / "value_head.safetensors"
    if not path.is_file():
        raise CheckpointError(
            f"{root} has no value_head.safetensors. NLA AR checkpoints ship this trained "
            f"Linear(d, d) head beside config.json; it cannot be derived from the backbone. "
            f"Re-download the AR repo completely.")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}). It is corrupted or "
                              f"truncated: re-download the AR repo.") from None
    w = state.get("weight")
    if w is None or tuple(w.shape) != (d, d) or not w.is_floating_point():
        raise CheckpointError(f"{path} must hold one floating-point tensor 'weight' of shape ({d}, {d}); "
                              f"found { {k: (tuple(v.shape), str(v.dtype)) for k, v in state.items()} }. "
                              f"It belongs to another model or is damaged: re-download the AR repo.")
    w = w.float()
    bad = int((~torch.isfinite(w)).sum())
    if bad:
        raise CheckpointError(f"{path} holds {bad} non-finite values (NaN/Inf) of {d * d}: every score "
                              f"would be NaN. The file is damaged: re-download the AR repo.")
    return w


class Reconstructor:
    def __init__(self, model, tokenizer, meta: NlaMeta, checkpoint_dir: Path, fve_variance: float | None,
                 device: str | None = None):
        """`device`: where inputs and the value head go; default the embedding's device (give it
        for a model accelerate offloaded, whose embedding may sit on the meta device)."""
        if meta.role != "ar":
            raise InputError(f"{meta.path} is an {meta.role.upper()} sidecar; --ar needs the AR checkpoint.")
        self.tok, self.meta = tokenizer, meta
        self.decoder, _ = text_parts(model)
        n_layers = text_config(model).num_hidden_layers
        validate_ar(meta, tokenizer, n_layers)
        # The value head reads the raw residual of block K, not the normed one.
        self.decoder.norm = torch.nn.Identity()
        d = text_config(model).hidden_size
        if d != meta.d_model:
            raise CheckpointError(f"The AR's hidden size is {d} but its sidecar says d_model={meta.d_model}.")
        self.device = torch.device(device) if device is not None else model_device(model)
        self.value_head = self._load_value_head(Path(checkpoint_dir), d)
        self.variance = fve_variance if fve_variance is not None else meta.fve_variance
        self.model = model
        self.forward_calls = 0

    def _load_value_head(self, root: Path, d: int) -> torch.nn.Linear:
        w = read_value_head(root, d)
        head = torch.nn.Linear(d, d, bias=False, device=self.device, dtype=torch.float32)
        head.weight.data.copy_(w)
        head.requires_grad_(False)
        return head

    def prompt_ids(self, explanations: list[str]) -> list[list[int]]:
        """AR prompt token ids, WITH <bos> (the Gemma/Llama ARs were trained that way)."""
        prompts = [self.meta.ar_template.format(explanation=e) for e in explanations]
        return [self.tok(p, add_special_tokens=True)["input_ids"] for p in prompts]

    def predict(self, explanations: list[str]) -> torch.Tensor:
        """[N, d] fp32 predictions for one batch, differentiable (training uses this;
        `reconstruct` wraps it in inference mode)."""
        enc = self.prompt_ids(explanations)
        # Right-pad: causal attention keeps the real tokens' states unaffected by padding.
        width = max(len(e) for e in enc)
        pad = self.tok.pad_token_id or 0
        ids = torch.tensor([e + [pad] * (width - len(e)) for e in enc], device=self.device)
        mask = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in enc], device=self.device)
        self.forward_calls += 1
        h = self.decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        last = torch.tensor([len(e) - 1 for e in enc], device=h.device)
        hl = h[torch.arange(len(enc), device=h.device), last].float().to(self.device)
        return self.value_head(hl)

    @torch.inference_mode()
    def reconstruct(self, explanations: list[str], batch_size: int = 16) -> np.ndarray:
        """[N, d] predicted activations (raw, unnormalized)."""
        out = [self.predict(explanations[i:i + batch_size]).cpu().numpy()
               for i in range(0, len(explanations), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.meta.d_model), np.float32)

    def score(self, explanations: list[str], originals: np.ndarray) -> list[Score | None]:
        """One Score per explanation; None where the reconstruction or the original is
        not finite (a NaN score would poison JSON, colours and sorting)."""
        originals = np.asarray(originals, dtype=np.float32).reshape(len(explanations), -1)
        preds = self.reconstruct(explanations)
        out: list[Score | None] = []
        for p, g in zip(preds, originals):
            s = score_vectors(p, g, self.meta.mse_scale, self.variance)
            finite = all(v is None or math.isfinite(v) for v in (s.cos, s.mse_nrm, s.fve_nrm))
            out.append(s if finite else None)
        return out
