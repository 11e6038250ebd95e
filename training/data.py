"""Training examples: layer-K activations at random positions, and warm-start targets.

The release had an LLM write 2–3 features the model would use to predict the next
token. We have no external LLM, so the target is built honestly from what is known at
the position: the current token, the text just before it, the subject's own top-3
next-token predictions (from its real logits), and where the position is (which
kind of text, or which chat role). Short (≤ 60 tokens), inside
`<explanation>…</explanation>`.

Activations are captured with a forward hook on `layers[K]` (= hidden_states[K+1]),
batched with right padding (causal attention: padding after a position cannot change
it); tests check this equals `Subject.capture` position for position.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

import torch

from nla_tui.core.types import Message

MAX_LEN = 192  # tokens per record: enough context, cheap to batch
CONTEXT_TOKENS = 8
MAX_TARGET_TOKENS = 60
SPLIT_SHARES = (("av_sft", 0.45), ("ar_sft", 0.2), ("rl", 0.35))  # of the train records
GENRE_CAP = {"dictionary entries": 2500, "chat: word meaning": 5000}  # keep the mix varied
ROLE_WORDS = {"user": "chat, user's message", "model": "chat, model's reply", "special": "chat markup",
              "system": "chat, system prompt"}


@dataclass
class Example:
    vector: torch.Tensor  # [d] fp32, on the capture device
    target: str  # explanation text, without the tags
    split: str
    info: dict = field(default_factory=dict)


def _split(record_key: str, heldout: bool) -> str:
    if heldout:
        return "heldout"
    u = int(hashlib.sha256(record_key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    acc = 0.0
    for name, share in SPLIT_SHARES:
        acc += share
        if u < acc:
            return name
    return SPLIT_SHARES[-1][0]


def token_text(tok, tid: int) -> str:
    """A token as it may appear inside an explanation: special tokens become [names]
    (their literal text would be parsed back into control tokens), newlines \\n."""
    if tid in tok.all_special_ids or tok.convert_ids_to_tokens(tid) in ("<start_of_turn>", "<end_of_turn>"):
        return "[" + tok.convert_ids_to_tokens(tid).strip("<>").replace("_", " ") + "]"
    return tok.decode([tid]).replace("\n", "\\n").replace("\t", "\\t")


def target_text(tok, ids: list[int], pos: int, where: str, top_ids: list[int]) -> str:
    """The warm-start explanation for position `pos` (without tags), ≤ MAX_TARGET_TOKENS."""
    cur = token_text(tok, ids[pos])
    nexts = ", ".join(f'"{token_text(tok, t)}"' for t in top_ids[:3])
    for n_ctx in (CONTEXT_TOKENS, 5, 3, 1):
        ctx = "".join(token_text(tok, t) for t in ids[max(1, pos - n_ctx):pos])[-80:]
        text = f'Token "{cur}" after "{ctx}". Next: {nexts}. Source: {where}.'
        if len(tok.encode(f"<explanation>{text}</explanation>", add_special_tokens=False)) <= MAX_TARGET_TOKENS:
            return text
    return f'Token "{cur}". Next: {nexts}.'


def tokenize_record(subject, rec: dict, rng: random.Random) -> tuple[list[int], list[str]]:
    """Token ids as the subject sees them and a label per position (kind of text or role)."""
    tok = subject.tok
    if "messages" in rec:
        msgs = [Message("assistant" if m["role"] in ("assistant", "model") else "user", m["content"])
                for m in rec["messages"]]
        ids, roles, _ = subject.tokenize(msgs)
        return ids[:MAX_LEN], [ROLE_WORDS.get(r, "chat markup") for r in roles][:MAX_LEN]
    genre = rec["genre"].split(" (")[0]
    if rng.random() < 0.4:  # a document pasted into a chat, as users do
        ids, roles, _ = subject.tokenize([Message("user", rec["text"][:900])])
        return ids[:MAX_LEN], [f"{genre}, in a user's message" if r == "user" else ROLE_WORDS.get(r, "chat markup")
                               for r in roles][:MAX_LEN]
    ids = [tok.bos_token_id] + tok.encode(rec["text"], add_special_tokens=False)
    return ids[:MAX_LEN], [genre] * min(len(ids), MAX_LEN)


@torch.inference_mode()
def capture_positions(subject, seqs: list[list[int]], positions: list[list[int]], top_k: int = 3):
    """Layer-K activations [n, d] (fp32) and top-k next-token ids [n, k] at the given
    positions of right-padded sequences, in one batched forward."""
    dev = subject.device
    width = max(len(s) for s in seqs)
    pad = subject.tok.pad_token_id or 0
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=dev)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=dev)
    store: dict[str, torch.Tensor] = {}

    def hook(_m, _i, out):
        store["h"] = out[0] if isinstance(out, tuple) else out

    handle = subject.decoder.layers[subject.layer].register_forward_hook(hook)
    try:
        out = subject.decoder(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        handle.remove()
    rows = torch.tensor([r for r, ps in enumerate(positions) for _ in ps], device=dev)
    cols = torch.tensor([p for ps in positions for p in ps], device=dev)
    acts = store["h"][rows, cols].float()
    logits = subject.lm_head(out.last_hidden_state[rows, cols]).float()
    cap = getattr(subject.model.config.get_text_config(), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    top = logits.topk(top_k, dim=-1).indices
    return acts, top.cpu().tolist()


def build_examples(subject, records: list[dict], seed: int = 0, batch: int = 64,
                   max_heldout: int = 600, progress=print) -> list[Example]:
    """Examples from every record: a few random positions each (never <bos>)."""
    rng = random.Random(seed)
    per_genre: dict[str, int] = {}
    chosen = []
    for i, rec in enumerate(records):
        g = rec["genre"].split(" (")[0]
        per_genre[g] = per_genre.get(g, 0) + 1
        if per_genre[g] > GENRE_CAP.get(g, 10**9) and rec["split"] != "heldout":
            continue
        chosen.append((i, rec))
    items = []
    for i, rec in chosen:
        ids, where = tokenize_record(subject, rec, rng)
        if len(ids) < 4:
            continue
        k = min(len(ids) // 24 + 1, 6)
        pos = sorted(rng.sample(range(1, len(ids)), min(k, len(ids) - 1)))
        items.append((ids, where, pos, _split(str(i), rec["split"] == "heldout"), rec["genre"]))
    # Held-out positions: a random subset over every kind of record (not the shortest).
    held = [(k, p) for k, it in enumerate(items) if it[3] == "heldout" for p in it[2]]
    keep_held = set(rng.sample(held, min(max_heldout, len(held))))
    items = [(ids, where, [p for p in pos if split != "heldout" or (k, p) in keep_held], split, genre)
             for k, (ids, where, pos, split, genre) in enumerate(items)]
    items = [it for it in items if it[2]]
    items.sort(key=lambda t: len(t[0]))  # similar lengths batch with little padding
    out: list[Example] = []
    for b in range(0, len(items), batch):
        chunk = items[b:b + batch]
        acts, tops = capture_positions(subject, [c[0] for c in chunk], [c[2] for c in chunk])
        j = 0
        for ids, where, pos, split, genre in chunk:
            for p in pos:
                text = target_text(subject.tok, ids, p, where[p], tops[j])
                out.append(Example(acts[j], text, split, {"genre": genre, "token": subject.tok.decode([ids[p]]),
                                                          "position": p}))
                j += 1
        if b // batch % 50 == 0:
            progress(f"captured {len(out)} positions ({b + len(chunk)}/{len(items)} records)")
    return out


def stats(examples: list[Example]) -> tuple[float, float]:
    """Median raw norm (the injection scale) and the predict-the-mean variance of the
    vectors normalised to √d (the FVE baseline), on the given examples."""
    v = torch.stack([e.vector for e in examples]).float()
    d = v.shape[-1]
    vn = v / v.norm(dim=-1, keepdim=True) * d ** 0.5
    return float(v.norm(dim=-1).median()), float(((vn - vn.mean(0, keepdim=True)) ** 2).mean())
