"""The Activation Verbalizer: one activation vector in, an explanation out.

The vector replaces the embedding of the injection char in the AV's chat-templated
prompt, rescaled to the sidecar's injection_scale, and the AV generates from
inputs_embeds. Everything comes from the sidecar (see sidecar.py).
"""

from __future__ import annotations

import re
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch

from ..errors import InputError
from ..models.loading import model_device
from .sidecar import NlaMeta, av_content, find_injection_slot, template_ids, validate_av
from ..types import Sampling

EXPLANATION_RE = re.compile(r"<explanation>\s*(.*?)\s*</explanation>", re.DOTALL)
CLOSE_TAG = "</explanation>"
_CJK = re.compile(r"[\u3040-\u30ff\u3130-\u318f\u3200-\u32ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uff00-\uffef]")

# on_step(new_ids_per_row) -> keep going?
StepFn = Callable[[list[int]], bool]


def parse_explanation(raw: str) -> tuple[str, bool]:
    """(text, truncated). Without a closing tag the raw text is kept as the text."""
    m = EXPLANATION_RE.search(raw)
    if m:
        return m.group(1).strip(), False
    text = raw.split("<explanation>", 1)[-1].strip()
    return text, True


def streaming_text(raw: str) -> str:
    """What to show of an explanation still being written: the text inside the tags, with
    no `<explanation>` and no half-written closing tag (`</expl`) at its end."""
    if "<explanation>".startswith(raw.strip()):
        return ""  # the opening tag itself is still being written
    text = raw.split("<explanation>", 1)[-1].split(CLOSE_TAG, 1)[0]
    for cut in range(len(CLOSE_TAG) - 1, 0, -1):
        if text.endswith(CLOSE_TAG[:cut]):
            return text[:-cut].lstrip()
    return text.lstrip()


def injection_warnings(raw: str, injection_char: str) -> list[str]:
    """Smells of an injection that did not land (wrong scale, missing √d, double BOS).
    The other warnings (truncation, a non-finite score) are added by explain.warnings_for."""
    out = []
    letters = [c for c in raw if not c.isspace()]
    cjk = sum(1 for c in letters if _CJK.match(c))
    if letters and (cjk / len(letters) > 0.2 or injection_char in raw):
        out.append("output is largely CJK or mentions the injection char: the injection may not have landed")
    if "\n\n\n" in raw:
        out.append("repeated blank lines: the AV may be degenerate for this vector")
    return out


def check_vectors(vectors: np.ndarray, d_model: int) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim == 1:
        v = v[None]
    if v.ndim != 2 or v.shape[1] != d_model:
        raise InputError(f"Activation vectors must have width d_model={d_model}; got shape {tuple(np.shape(vectors))}. "
                         f"Capture them at the AV's layer from the matching subject model.")
    if not np.isfinite(v).all():
        raise InputError("An activation vector contains NaN or Inf, so it cannot be rescaled or explained. "
                         "Recapture it (a non-finite activation usually means fp16 overflow in the subject).")
    if (np.linalg.norm(v, axis=1) == 0).any():
        raise InputError("An activation vector is all zeros: it has no direction to explain.")
    return v


class Verbalizer:
    def __init__(self, model, tokenizer, meta: NlaMeta):
        if meta.role != "av":
            raise InputError(f"{meta.path} is an {meta.role.upper()} sidecar; --av needs the AV checkpoint.")
        self.model, self.tok, self.meta = model, tokenizer, meta
        self.embed = model.get_input_embeddings()  # Gemma's scales by √d in forward
        self.canonical_ids = validate_av(meta, tokenizer, self.embed.weight.shape[1])
        self.device = model_device(model)
        self.generate_calls = 0
        # Called once per row as it finishes (closing tag or end of turn), before its batch
        # ends: explain-all progress counts rows, not batches (see counting_rows).
        self._row_done_hooks: list[Callable[[int], None]] = []

    @contextmanager
    def counting_rows(self, on_row_done: Callable[[int], None]) -> Iterator[None]:
        """Call on_row_done(row in its batch) as each row of every generate() inside
        finishes. Rows that run to max_new_tokens finish with their batch, which the caller
        counts itself."""
        self._row_done_hooks.append(on_row_done)
        try:
            yield
        finally:
            self._row_done_hooks.remove(on_row_done)

    def start_precapture(self, max_new_tokens: int = Sampling().max_new_tokens):
        """Capture, on a thread, the decode graph a default single explanation uses (the
        canonical prompt + `max_new_tokens`); join() the result before the first explanation.
        None off CUDA (models/precapture.py)."""
        from ..models import precapture

        return precapture.start(self.model, len(self.canonical_ids) + max_new_tokens)

    def stop_ids(self) -> list[int]:
        ids = {self.tok.eos_token_id}
        i = self.tok.convert_tokens_to_ids("<end_of_turn>")
        if isinstance(i, int) and i != self.tok.unk_token_id:
            ids.add(i)
        return [i for i in ids if i is not None]

    def prompt_ids(self, prompt: str | None) -> tuple[list[int], int]:
        if prompt is None:
            ids = self.canonical_ids
            return ids, find_injection_slot(self.meta, ids)
        ids = template_ids(self.tok, av_content(self.meta, prompt))
        # A custom prompt has its own neighbours; still exactly one slot.
        return ids, find_injection_slot(self.meta, ids, check_neighbors=False)

    @torch.inference_mode()
    def build_embeds(self, vectors: np.ndarray, prompt: str | None = None) -> torch.Tensor:
        """[N, T, d] prompt embeddings with row `slot` replaced by v·scale/‖v‖."""
        v = torch.from_numpy(check_vectors(vectors, self.meta.d_model)).to(self.device)
        ids, slot = self.prompt_ids(prompt)
        base = self.embed(torch.tensor([ids], device=self.device))  # [1, T, d], √d applied once
        norm = v.float().norm(dim=-1, keepdim=True)
        scaled = (v.float() * (self.meta.injection_scale / norm)).to(base.dtype)
        embeds = base.expand(v.shape[0], -1, -1).clone()
        embeds[:, slot] = scaled
        return embeds

    @torch.inference_mode()
    def decode(self, embeds: torch.Tensor, sampling: Sampling, on_step: StepFn | None = None,
               cancel: threading.Event | None = None) -> list[list[int]]:
        """Generate from inputs_embeds (never also input ids); new token ids per row.

        Goes through fast_decode (static KV cache, CUDA graphs on GPU, the template
        prefix before the injection slot computed once); its greedy output equals
        HF generate token for token (tests/integration/test_fast_decode.py)."""
        from ..models import fast_decode

        self.generate_calls += 1
        tok = self.tok
        stops = self.stop_ids()
        # One row: split at the canonical slot (the cached prefix is keyed by content, so
        # any split is exact). Several rows: fast_decode finds their common prefix itself.
        _, slot = self.prompt_ids(None)
        shared = slot if embeds.shape[0] == 1 and embeds.shape[1] > slot else None

        def step(new: torch.Tensor) -> bool:
            if cancel is not None and cancel.is_set():
                return False
            return True if on_step is None else on_step(new.tolist())

        generator = None
        if sampling.temperature > 0:
            generator = torch.Generator(device=self.device).manual_seed(sampling.seed)
        rows = fast_decode.decode(
            self.model, embeds, None, sampling.max_new_tokens, temperature=sampling.temperature,
            top_p=sampling.top_p, generator=generator, stop_token_ids=stops,
            # Per-row stop on the closing tag: decode only the tail, not the whole row.
            stop_strings_fn=lambda ids: CLOSE_TAG in tok.decode(ids[-6:]),
            on_step=step, prefix_len=shared, max_batch=max(1, embeds.shape[0]))
        stop_set = set(stops)
        return [row[:-1] if row and row[-1] in stop_set else row for row in rows]

    def generate(self, vectors: np.ndarray, sampling: Sampling = Sampling(), prompt: str | None = None,
                 on_text: Callable[[int, str], None] | None = None,
                 cancel: threading.Event | None = None) -> list[str]:
        """Raw AV output for each vector. on_text(row, text_so_far) streams."""
        embeds = self.build_embeds(vectors, prompt)
        so_far: list[list[int]] = [[] for _ in range(embeds.shape[0])]
        done = [False] * embeds.shape[0]
        stops = set(self.stop_ids())
        hooks = list(self._row_done_hooks)

        def step(new: list[int]) -> bool:
            for r, tid in enumerate(new):
                if done[r]:
                    continue
                if tid < 0 or tid in stops:  # -1: row no longer decoding
                    done[r] = True
                    for hook in hooks:
                        hook(r)
                    continue
                so_far[r].append(tid)
                if on_text is not None:
                    on_text(r, self.tok.decode(so_far[r], skip_special_tokens=True))
            return True

        rows = self.decode(embeds, sampling, step if on_text or hooks else None, cancel)
        return [self.tok.decode(r, skip_special_tokens=True) for r in rows]
