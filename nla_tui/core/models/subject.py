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

from ..errors import InputError
from .loading import model_device, text_config, text_parts
from ..types import Candidate, Capture, Message, TokenInfo

TOP_K = 5
# Tokens that open a new turn in common chat templates: scaffolding after one of
# these belongs to the next message, scaffolding before it to the previous one.
TURN_OPENERS = {"<start_of_turn>", "<|im_start|>", "<|start_header_id|>"}
ROLE_OF = {"user": "user", "assistant": "model", "model": "model", "system": "system"}



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

    @property
    def max_positions(self) -> int | None:
        return getattr(text_config(self.model), "max_position_embeddings", None)

    def check_fits(self, n_tokens: int, new_tokens: int = 0) -> None:
        """Refuse a conversation longer than the subject's context before running it: an
        over-long input would otherwise try to allocate attention for all of it (a 5 MB
        transcript asked for ~1 TB)."""
        limit = self.max_positions
        if limit and n_tokens + new_tokens > limit:
            reply = f" plus {new_tokens} reply tokens" if new_tokens else ""
            raise InputError(
                f"The conversation is {n_tokens} tokens long{reply}, but the subject reads at most "
                f"{limit} positions. Shorten it by at least {n_tokens + new_tokens - limit} tokens "
                f"(about {(n_tokens + new_tokens - limit) * 4} characters of English), e.g. drop "
                f"early messages{' or lower --max-new-tokens' if new_tokens else ''}.")

    # ------------------------------------------------------------ tokenization

    def render(self, messages: list[Message], add_generation_prompt: bool = False) -> str:
        try:
            return self.tok.apply_chat_template([m.to_json() for m in messages], tokenize=False,
                                                add_generation_prompt=add_generation_prompt)
        except Exception as e:  # jinja raise_exception: roles must alternate, etc.
            raise InputError(f"The conversation does not fit the subject's chat template: {e}. "
                             f"Messages must alternate user/assistant (an optional system message first).") from None

    def tokenize(self, messages: list[Message], add_generation_prompt: bool = False) -> tuple[list[int], list[str], list[int]]:
        """Token ids of the templated conversation, exactly as the model sees it, with
        each token's role and the message (turn) it belongs to."""
        text = self.render(messages, add_generation_prompt)
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        spans, pos = [], 0
        for turn, m in enumerate(messages):
            c = m.content.strip()
            i = text.find(c, pos) if c else -1
            if i >= 0:
                spans.append((i, i + len(c), ROLE_OF.get(m.role, "user"), turn))
                pos = i + len(c)
        roles, turns = [], []
        turn, nxt = -1, 0
        for k, (tid, (s, e)) in enumerate(zip(ids, offsets)):
            while nxt < len(spans) and spans[nxt][1] <= s:
                nxt += 1
            inside = nxt < len(spans) and s < spans[nxt][1] and e > spans[nxt][0] and e > s
            if k == 0 and tid == self.tok.bos_token_id:
                roles.append("bos"); turns.append(-1)
                continue
            if inside:
                turn = spans[nxt][3]
                roles.append(spans[nxt][2])
            else:
                if self.tok.convert_ids_to_tokens(tid) in TURN_OPENERS:
                    turn = spans[nxt][3] if nxt < len(spans) else len(messages)
                roles.append("special")
            turns.append(max(turn, 0))
        return list(ids), roles, turns

    # ------------------------------------------------------------ capture

    @torch.inference_mode()
    def capture(self, ids: list[int], chunk: int = 256) -> Capture:
        """One forward pass: layer-K residual and top-k next-token candidates everywhere."""
        self.check_fits(len(ids))
        self.forward_calls += 1
        x = torch.tensor([ids], device=self.device)
        store: dict[str, torch.Tensor] = {}

        def hook(_mod, _inp, out):
            store["h"] = out[0] if isinstance(out, tuple) else out

        handle = self.decoder.layers[self.layer].register_forward_hook(hook)
        try:
            out = self.decoder(input_ids=x, use_cache=False)
        finally:
            handle.remove()
        acts = store["h"][0].float().cpu().numpy()
        cap = getattr(text_config(self.model), "final_logit_softcapping", None)
        h = out.last_hidden_state[0]
        top_ids, top_probs = [], []
        for i in range(0, h.shape[0], chunk):  # full-vocab logits for 1,000 tokens would be ~1 GB
            logits = self.lm_head(h[i:i + chunk]).float()
            if cap:
                logits = torch.tanh(logits / cap) * cap
            p, t = torch.softmax(logits, dim=-1).topk(TOP_K, dim=-1)
            top_ids.append(t.cpu()); top_probs.append(p.cpu())
        return Capture(acts, torch.cat(top_ids).numpy(), torch.cat(top_probs).numpy())

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
        self.check_fits(len(ids), max_new_tokens)
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
