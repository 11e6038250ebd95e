"""The subject model: chat through its chat template, and capture layer K.

"Layer K" is the residual-stream output of decoder block K, i.e. hidden_states[K+1]
(index 0 is the embedding output). A forward hook on layers[K] returns the same
tensor without keeping every layer's states around.
"""

from __future__ import annotations

import threading
from typing import Callable

import numpy as np
import torch

from .capture import MIN_CHUNK, TOP_K, KvPrefix, capture_chunked, common_prefix, kv_keep_budget
from .context import check_context, context_limit
from .conversation import render as render_conversation
from .conversation import tag_tokens
from ..errors import InputError
from .loading import model_device, text_config, text_parts
from ..types import Candidate, Capture, Message, TokenInfo

__all__ = ["Subject", "TOP_K"]


class _Streamer:
    """Minimal transformers streamer: decodes the growing reply and reports deltas;
    raising Cancelled from put() would leave generate in a bad state, so cancellation
    goes through a StoppingCriteria instead."""

    def __init__(self, tokenizer, on_delta: Callable[[str], None] | None, skip_prompt: bool):
        self.tok, self.on_delta, self.skip = tokenizer, on_delta, skip_prompt
        self.ids: list[int] = []
        self.sent = ""

    def put(self, value: torch.Tensor) -> None:
        if self.skip:  # generate() first hands over the prompt
            self.skip = False
            return
        self.ids.extend(int(i) for i in value.reshape(-1).tolist())
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if self.on_delta and len(text) > len(self.sent) and not text.endswith("\ufffd"):
            self.on_delta(text[len(self.sent):])
            self.sent = text

    def end(self) -> None:
        pass


class Subject:
    def __init__(self, model, tokenizer, layer: int):
        n = text_config(model).num_hidden_layers
        if not 0 <= layer < n:
            raise InputError(f"Layer {layer} does not exist: the subject has layers 0..{n - 1}.")
        self.model, self.tok, self.layer = model, tokenizer, layer
        self.decoder, self.lm_head = text_parts(model)
        self.device = model_device(model)
        self.forward_calls = 0
        self.forward_tokens = 0  # positions captures have run through the decoder (an edit's re-capture: its suffix)
        self.kept: KvPrefix | None = None  # the last capture's keys/values (within kv_keep_budget())

    # ------------------------------------------------------------ tokenization

    def render(self, messages: list[Message], add_generation_prompt: bool = False) -> str:
        return render_conversation(self.tok, messages, add_generation_prompt)[0]

    def tokenize(self, messages: list[Message], add_generation_prompt: bool = False) -> tuple[list[int], list[str], list[int]]:
        """Token ids of the templated conversation with each token's role and message
        (core.conversation folds system/tool roles into the template)."""
        return tag_tokens(self.tok, messages, add_generation_prompt)

    @property
    def context_limit(self) -> int | None:
        return context_limit(text_config(self.model))

    # ------------------------------------------------------------ capture

    def capture(self, ids: list[int], chunk: int | None = None, progress=None,
                cancel: threading.Event | None = None,
                parent: tuple[list[int], Capture] | None = None) -> Capture:
        """Layer-K residual and top-k next-token candidates everywhere, in chunks over a
        KV cache (core.capture: bit-for-bit the one-pass result on CPU).

        `parent` (its ids and their capture): `ids` is an edit of it. Positions before the
        first token that differs are the parent's rows, copied (bit for bit); the decoder
        runs only from there on, over the keys/values this subject kept from its last
        capture where they cover that prefix (`Capture.start` says where it ran from)."""
        # The engine checked already (with the subject's name); this guards direct callers.
        check_context(len(ids), self.context_limit, "the subject")
        self.forward_calls += 1
        same = common_prefix(parent[0], ids) if parent is not None else 0
        start = min(same, self.kept.reusable(ids)) if self.kept is not None and same else 0
        if start and self.device.type == "cpu":
            # BLAS takes another kernel for a few rows, whose last bits differ from a whole
            # capture's: at least MIN_CHUNK positions re-run, so every row is bit for bit
            # what capturing the edited conversation from scratch gives.
            start = max(0, min(start, len(ids) - MIN_CHUNK))
        if start == len(ids):  # nothing new (a prefix of what was kept): one position re-runs for its logits
            start -= 1
        seed = self.kept.seeded(self, start) if start else None
        self.kept = None  # released before the new cache grows (its memory is the budget's)
        cap, cache = capture_chunked(self, ids, chunk, progress, cancel, start, seed)
        self.forward_tokens += len(ids) - start
        kept = KvPrefix(list(ids), cache)
        self.kept = kept if kept.complete and kept.nbytes <= kv_keep_budget() else None
        if parent is not None and same:
            cap = splice(parent[1], same, cap, start)
        cap.start = start
        return cap

    def token_infos(self, ids: list[int], roles: list[str], turns: list[int], cap: Capture) -> list[TokenInfo]:
        norms = np.linalg.norm(cap.activations, axis=-1)
        texts = [self.tok.decode([i]) for i in ids]
        cand_text: dict[int, str] = {}
        out = []
        for k, tid in enumerate(ids):
            top = []
            for cid, p in zip(cap.top_ids[k].tolist(), cap.top_probs[k].tolist()):
                if cid not in cand_text:
                    cand_text[cid] = self.tok.decode([cid])
                top.append(Candidate(int(cid), cand_text[cid], float(p)))
            out.append(TokenInfo(k, int(tid), texts[k], roles[k], turns[k], float(norms[k]), top))
        return out

    # ------------------------------------------------------------ chat

    def stop_ids(self) -> list[int]:
        ids = {self.tok.eos_token_id}
        for t in ("<end_of_turn>", "<|im_end|>", "<|eot_id|>"):
            i = self.tok.convert_tokens_to_ids(t)
            if isinstance(i, int) and i != self.tok.unk_token_id:
                ids.add(i)
        return [i for i in ids if i is not None]

    @torch.inference_mode()
    def generate(self, messages: list[Message], max_new_tokens: int,
                 on_delta: Callable[[str], None] | None = None,
                 cancel: threading.Event | None = None) -> str:
        """Greedy reply to the conversation (ending in a user turn), streamed.

        Decoding goes through fast_decode (static KV cache, CUDA graphs on GPU): ~6x
        HF generate per step on an H100 at 27B shape (BENCHMARKS.md), same greedy tokens."""
        from . import fast_decode

        ids, _, _ = self.tokenize(messages, add_generation_prompt=True)
        check_context(len(ids), self.context_limit, "the subject", max_new_tokens)
        embeds = self.model.get_input_embeddings()(torch.tensor([ids], device=self.device))
        streamer = _Streamer(self.tok, on_delta, skip_prompt=False)
        stops = set(self.stop_ids())

        def step(new: torch.Tensor) -> bool:
            if cancel is not None and cancel.is_set():
                return False  # the partial reply is kept: the user keeps what was generated
            t = int(new[0])
            if t >= 0 and t not in stops:
                streamer.put(torch.tensor([t]))
            return True

        self.forward_calls += 1
        rows = fast_decode.decode(self.model, embeds, None, max_new_tokens, stop_token_ids=stops,
                                  on_step=step, max_batch=1)
        out = [t for t in rows[0] if t not in stops]
        return self.tok.decode(out, skip_special_tokens=True).strip()


def splice(parent: Capture, same: int, suffix: Capture, start: int) -> Capture:
    """The parent's rows 0..same-1 followed by `suffix`'s rows for positions same.. (the
    suffix capture began at position `start` <= same). Residuals only where both have them."""
    cut = same - start

    def join(a, b):
        return np.concatenate([np.asarray(a)[:same], np.asarray(b)[cut:]])

    residuals = None
    if parent.residuals is not None and suffix.residuals is not None and len(parent.residuals) >= same:
        residuals = join(parent.residuals, suffix.residuals)
    return Capture(join(parent.activations, suffix.activations), join(parent.top_ids, suffix.top_ids),
                   join(parent.top_probs, suffix.top_probs), residuals)
