"""The three losses: AV supervised (warm start), AR regression, and the GRPO step.

AV: the product's `Verbalizer.build_embeds` makes the prompt rows (vector injected at
the sidecar's slot and scale); the explanation's token embeddings follow; cross
entropy on the explanation tokens only. AR: `Reconstructor.predict` (the scoring
path, differentiable), loss = mse between vectors scaled to √d = 2(1 − cos).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

OPEN, CLOSE = "<explanation>", "</explanation>"


def target_ids(vz, text: str) -> list[int]:
    """What the AV should write for `text`: the tagged explanation, then end of turn."""
    ids = vz.tok.encode(f"{OPEN}{text}{CLOSE}", add_special_tokens=False)
    return ids + [_end_of_turn(vz)]


def _end_of_turn(vz) -> int:
    i = vz.tok.convert_tokens_to_ids("<end_of_turn>")
    return i if isinstance(i, int) and i != vz.tok.unk_token_id else vz.tok.eos_token_id


def _softcap(model, logits: torch.Tensor) -> torch.Tensor:
    cap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def av_token_logprobs(vz, vectors: torch.Tensor, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(seq token | vector, previous tokens) for each row: [B, L] and a [B, L] mask."""
    prompt = vz.build_embeds(vectors.float().cpu().numpy()).clone()  # inference tensor → normal
    B, Tp, _ = prompt.shape
    L = max(len(s) for s in seqs)
    pad = vz.tok.pad_token_id or 0
    ids = torch.tensor([s + [pad] * (L - len(s)) for s in seqs], device=prompt.device)
    mask = torch.tensor([[1] * len(s) + [0] * (L - len(s)) for s in seqs], device=prompt.device)
    x = torch.cat([prompt, vz.embed(ids).to(prompt.dtype)], dim=1)
    attn = torch.cat([torch.ones(B, Tp, dtype=mask.dtype, device=mask.device), mask], dim=1)
    decoder = vz.model.get_decoder() if hasattr(vz.model, "get_decoder") else vz.model.model
    h = decoder(inputs_embeds=x, attention_mask=attn, use_cache=False).last_hidden_state
    hs = h[:, Tp - 1:Tp - 1 + L]  # the state before each explanation token predicts it
    sel = mask.bool()
    logits = _softcap(vz.model, vz.model.get_output_embeddings()(hs[sel]).float())
    lp = torch.zeros(B, L, device=h.device, dtype=torch.float32)
    lp[sel] = torch.log_softmax(logits, dim=-1).gather(-1, ids[sel][:, None])[:, 0]
    return lp, mask.float()


def av_sft_loss(vz, vectors: torch.Tensor, texts: list[str]) -> torch.Tensor:
    lp, mask = av_token_logprobs(vz, vectors, [target_ids(vz, t) for t in texts])
    return -(lp * mask).sum() / mask.sum()


def normalized_mse(pred: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """Per row: mean((p̂ − ĝ)²) with both scaled to L2 = √d, i.e. 2(1 − cos)."""
    d = pred.shape[-1]
    p = F.normalize(pred.float(), dim=-1) * d ** 0.5
    g = F.normalize(gold.float().to(pred.device), dim=-1) * d ** 0.5
    return ((p - g) ** 2).mean(dim=-1)


def ar_loss(rc, texts: list[str], vectors: torch.Tensor) -> torch.Tensor:
    return normalized_mse(rc.predict(texts), vectors).mean()


def rl_loss(vz, ref, vectors: torch.Tensor, seqs: list[list[int]], advantages: torch.Tensor,
            kl_coef: float) -> tuple[torch.Tensor, float]:
    """GRPO with one update per batch of rollouts (so the ratio is 1 and the clipped
    objective reduces to advantage-weighted log-likelihood), per-token KL to the SFT
    policy `ref` (k3 estimator), averaged per sequence then over sequences."""
    lp, mask = av_token_logprobs(vz, vectors, seqs)
    with torch.no_grad():
        ref_lp, _ = av_token_logprobs(ref, vectors, seqs)
    delta = ref_lp - lp
    kl = torch.exp(delta) - delta - 1
    per_tok = -advantages[:, None].to(lp.device) * lp + kl_coef * kl
    per_seq = (per_tok * mask).sum(1) / mask.sum(1).clamp(min=1)
    mean_kl = float(((kl.detach() * mask).sum(1) / mask.sum(1).clamp(min=1)).mean())
    return per_seq.mean(), mean_kl
