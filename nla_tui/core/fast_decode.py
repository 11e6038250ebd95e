"""Fast autoregressive decoding from `inputs_embeds`, used for AV explanations.

Why not `model.generate`: at batch 1 on a 27B nf4 model, eager generate spends
~190 ms of CPU per step launching ~5,400 kernels for ~35 ms of GPU work. This
module keeps its own static KV cache (fixed addresses, fixed shapes), so the
whole decode step can be captured once into a `torch.cuda.CUDAGraph` per
(batch bucket, cache length) and replayed with one launch. No torch.compile.

- The cache is our own duck-typed `Cache` (just `update`): transformers 5.17
  and 5.24 differ in cache classes and argument names, but both call
  `cache.update(k, v, layer_idx, ...)` and both accept a ready 4D mask (or a
  dict of them per layer type), so we build masks ourselves and never touch
  transformers' mask or cache machinery.
- Every layer keeps a full-length cache; sliding-window layers are handled by
  the mask (`kv > q - window`), which equals HF's semantics and costs nothing
  at AV lengths (a few hundred tokens, window 512/1024).
- Rows of equal prompt length run together without padding (explain-all uses
  one template, so that is every row); groups of different lengths run one
  after another. Batches are rounded up to a bucket size by repeating a row.
- The shared prompt prefix (the AV template before the injection slot) is
  computed once at batch 1 and copied into every row; it is also kept across
  calls in a small LRU keyed by the prefix's bytes.

On CPU the same static-cache path runs eagerly (no graphs); tests compare its
greedy output with HF `generate` token for token.
"""

from __future__ import annotations

import hashlib
import inspect
import time
import weakref
from collections import OrderedDict
from typing import Callable, Iterable, Sequence

import torch

BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256)
LEN_QUANTUM = 64  # cache lengths are rounded up to this, so graphs get reused
MAX_RUNNERS = 4  # captured graphs (+ their KV caches) kept per model
PREFIX_LRU = 8

# Per model: runners and cached prefixes. Weak keys: dropping a model frees them.
_RUNNERS: "weakref.WeakKeyDictionary[torch.nn.Module, OrderedDict]" = weakref.WeakKeyDictionary()
_PREFIXES: "weakref.WeakKeyDictionary[torch.nn.Module, OrderedDict]" = weakref.WeakKeyDictionary()

#: Figures from the last `decode` call (the benchmark reads them).
last_stats: dict = {}


class _StaticKV:
    """Minimal transformers-compatible cache: one [B, kv_heads, L, head_dim] buffer
    per layer, written at the positions in `self.write_idx` (a device tensor, so a
    captured graph reads the current position without re-capture)."""

    is_compileable = True

    def __init__(self, n_layers: int, batch: int, max_len: int):
        self.n_layers = n_layers
        self.batch = batch
        self.max_len = max_len
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers
        self.write_idx: torch.Tensor | None = None
        self.rows: slice = slice(None)  # prefix prefill writes row 0 only
        self.seen = 0

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if self.keys[layer_idx] is None:  # lazy: shapes and dtype come from the model
            _, h, _, d = key_states.shape
            self.keys[layer_idx] = key_states.new_zeros((self.batch, h, self.max_len, d))
            self.values[layer_idx] = value_states.new_zeros((self.batch, h, self.max_len, value_states.shape[-1]))
        k = self.keys[layer_idx][self.rows]
        v = self.values[layer_idx][self.rows]
        k.index_copy_(2, self.write_idx, key_states)
        v.index_copy_(2, self.write_idx, value_states)
        return k, v

    # Called by some models only when position_ids is missing; we always pass them.
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen

    def __len__(self) -> int:
        return self.n_layers


def _text_config(model):
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def _cache_kwarg(model) -> str:
    """transformers 5.24 renamed `past_key_values` to `cache` (the old name still
    works with a deprecation shim); use whichever the forward declares."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _round_len(n: int) -> int:
    return -(-n // LEN_QUANTUM) * LEN_QUANTUM


def bucket_for(batch: int) -> int:
    for b in BATCH_BUCKETS:
        if b >= batch:
            return b
    return batch


class _Runner:
    """Static cache + (on CUDA) a captured decode step for one (batch, length)."""

    def __init__(self, model, batch: int, max_len: int, use_graph: bool):
        self.model = model
        self.batch = batch
        self.max_len = max_len
        cfg = _text_config(model)
        self.n_layers = cfg.num_hidden_layers
        self.layer_types = list(getattr(cfg, "layer_types", None) or [])
        self.window = getattr(cfg, "sliding_window", None)
        self.eager_mask = getattr(cfg, "_attn_implementation", "sdpa") == "eager"
        self.device = model.get_input_embeddings().weight.device
        self.dtype = model.get_input_embeddings().weight.dtype
        self.kv = _StaticKV(self.n_layers, batch, max_len)
        # Allocate up front (not lazily) so a cached prefix can be copied in before any forward.
        heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        for i in range(self.n_layers):
            self.kv.keys[i] = torch.zeros((batch, heads, max_len, head_dim), dtype=self.dtype, device=self.device)
            self.kv.values[i] = torch.zeros_like(self.kv.keys[i])
        self.cache_kw = _cache_kwarg(model)
        self.arange = torch.arange(max_len, device=self.device)
        self.ids = torch.zeros((batch, 1), dtype=torch.long, device=self.device)
        self.pos = torch.zeros((1,), dtype=torch.long, device=self.device)
        self.graph = None
        self.graph_error: str | None = None
        self.logits = None
        if use_graph and self.device.type == "cuda":
            self._capture()

    # -- masks: True/0.0 = attend. HF semantics: kv <= q, and kv > q - window on sliding layers.
    def _masks(self, q_pos: torch.Tensor):
        """q_pos: [q] absolute positions. Returns a 4D mask or a dict per layer type."""
        kv = self.arange[None, :]
        q = q_pos[:, None]
        full = kv <= q
        masks = {"full_attention": full}
        if "sliding_attention" in self.layer_types and self.window:
            masks["sliding_attention"] = full & (kv > q - self.window)
        out = {}
        for name, m in masks.items():
            m = m[None, None]  # [1, 1, q, L], broadcast over the batch
            if self.eager_mask:  # eager attention adds the mask
                m = torch.zeros(m.shape, dtype=self.dtype, device=self.device).masked_fill(
                    ~m, torch.finfo(self.dtype).min)
            out[name] = m
        if not self.layer_types:
            return out["full_attention"]
        return {t: out.get(t, out["full_attention"]) for t in set(self.layer_types)}

    def _forward(self, q_pos, *, ids=None, embeds=None):
        x = ids if ids is not None else embeds
        pos_ids = q_pos[None, :].expand(x.shape[0], q_pos.shape[0])
        kwargs = {self.cache_kw: self.kv, "attention_mask": self._masks(q_pos), "position_ids": pos_ids,
                  "use_cache": True, "logits_to_keep": 1}
        if ids is not None:
            kwargs["input_ids"] = ids
        else:
            kwargs["inputs_embeds"] = embeds
        return self.model(**kwargs).logits[:, -1, :]

    def _step_body(self):
        self.kv.write_idx = self.pos
        return self._forward(self.pos, ids=self.ids)

    def _capture(self):
        _quant_state_to_device(self.model, self.device)
        # Warm up on a side stream (allocates the cache, sets bnb compute types), then
        # capture. Writing at the last slot is harmless: that slot is masked out until
        # decoding reaches it, and then it is overwritten first.
        self.pos.fill_(self.max_len - 1)
        try:
            s = torch.cuda.Stream(device=self.device)
            s.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(s):
                for _ in range(2):
                    self._step_body()
            torch.cuda.current_stream(self.device).wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                self.logits = self._step_body()
            self.graph = g
        except Exception as exc:  # fall back to eager steps, but say why
            self.graph, self.logits = None, None
            self.graph_error = f"{type(exc).__name__}: {exc}"
            torch.cuda.synchronize(self.device)

    def prefill(self, embeds: torch.Tensor, start: int, rows: slice = slice(None)) -> torch.Tensor:
        """Run positions start..start+n-1 of `embeds` [b, n, d] into the cache."""
        n = embeds.shape[1]
        q_pos = torch.arange(start, start + n, device=self.device)
        self.kv.write_idx, self.kv.rows = q_pos, rows
        try:
            return self._forward(q_pos, embeds=embeds)
        finally:
            self.kv.rows = slice(None)
            self.kv.seen = start + n

    def step(self, next_ids: torch.Tensor, pos: int) -> torch.Tensor:
        """Feed next_ids [batch] at position `pos`; return logits [batch, V]."""
        self.ids.copy_(next_ids.view(-1, 1))
        self.pos.fill_(pos)
        self.kv.seen = pos + 1
        if self.graph is not None:
            self.graph.replay()
            return self.logits
        return self._step_body()

    def copy_prefix(self, src: list[tuple[torch.Tensor, torch.Tensor]], length: int):
        for layer, (k, v) in enumerate(src):
            self.kv.keys[layer][:, :, :length].copy_(k.expand(self.batch, -1, -1, -1))
            self.kv.values[layer][:, :, :length].copy_(v.expand(self.batch, -1, -1, -1))

    def read_prefix(self, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(self.kv.keys[i][:1, :, :length].clone(), self.kv.values[i][:1, :, :length].clone())
                for i in range(self.n_layers)]


def _quant_state_to_device(model, device):
    """bitsandbytes keeps small quantisation tables that may sit on the CPU; a
    host-to-device copy inside graph capture is illegal, so move them first."""
    for mod in model.modules():
        qs = getattr(getattr(mod, "weight", None), "quant_state", None)
        if qs is not None and hasattr(qs, "to"):
            qs.to(device)


def _runner(model, batch: int, max_len: int, use_graph: bool) -> _Runner:
    runners = _RUNNERS.setdefault(model, OrderedDict())
    key = (batch, max_len, use_graph)
    r = runners.pop(key, None)
    if r is None:
        while len(runners) >= MAX_RUNNERS:
            runners.popitem(last=False)
        r = _Runner(model, batch, max_len, use_graph)
    runners[key] = r
    return r


def warmup(model, batch_sizes: Iterable[int] = (1,), max_len: int = 256, use_graphs: bool | None = None) -> float:
    """Capture decode graphs ahead of time (start-up), so the first explanation
    pays no capture cost. Returns seconds spent."""
    t = time.perf_counter()
    use = _use_graphs(model, use_graphs)
    with torch.inference_mode():
        for b in batch_sizes:
            r = _runner(model, bucket_for(b), _round_len(max_len), use)
            # Allocate the cache even without graphs (first prefill would otherwise).
            if r.kv.keys[0] is None:
                r.step(torch.zeros(r.batch, dtype=torch.long, device=r.device), r.max_len - 1)
    return time.perf_counter() - t


def _use_graphs(model, use_graphs):
    dev = model.get_input_embeddings().weight.device
    return dev.type == "cuda" if use_graphs is None else (use_graphs and dev.type == "cuda")


def _prefix_key(embeds: torch.Tensor) -> str:
    data = embeds.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha1(data).hexdigest()


def _common_prefix(embeds: torch.Tensor) -> int:
    """Longest prefix identical in every row (rows already share one length)."""
    if embeds.shape[0] < 2:
        return 0
    same = (embeds == embeds[:1]).all(dim=-1).all(dim=0)  # [T]
    diff = (~same).nonzero()
    return int(diff[0]) if diff.numel() else embeds.shape[1] - 1


def _pick(logits: torch.Tensor, temperature: float, top_p: float, generator) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sp, si = probs.sort(dim=-1, descending=True)
        drop = sp.cumsum(-1) - sp > top_p  # keep the smallest set reaching top_p
        sp = sp.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, si, sp)
    if generator is not None and generator.device != probs.device:
        return torch.multinomial(probs.cpu(), 1, generator=generator).view(-1).to(probs.device)
    return torch.multinomial(probs, 1, generator=generator).view(-1)


@torch.inference_mode()
def decode(model, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None,
           max_new_tokens: int = 200, temperature: float = 0.0, top_p: float = 1.0,
           generator: torch.Generator | None = None, stop_token_ids: Sequence[int] | set | None = None,
           stop_strings_fn: Callable[[list[int]], bool] | None = None,
           on_step: Callable[[torch.Tensor], bool] | None = None, *,
           prefix_len: int | None = None, max_batch: int = 64, use_graphs: bool | None = None,
           ) -> list[list[int]]:
    """Generate up to `max_new_tokens` per row from `inputs_embeds` [B, T, d].

    attention_mask [B, T] may left-pad rows of different lengths; padding is
    stripped and rows are grouped by true length. Returns the new token ids per
    row, ending with the stop token when one was produced (as HF generate does).
    stop_strings_fn(ids_so_far) -> True stops that row (e.g. `</explanation>`).
    on_step(new_ids [B] on CPU, -1 for rows not decoding this step) -> False cancels.
    prefix_len: length of a prefix shared by every call (AV template before the
    injection slot); None = detect it across rows of this call.
    """
    B, T, _ = inputs_embeds.shape
    stops = set(int(s) for s in (stop_token_ids or ()))
    mask = attention_mask if attention_mask is not None else torch.ones(B, T, dtype=torch.long)
    lengths = mask.to("cpu").long().sum(dim=1).tolist()
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(int(n), []).append(i)
    out: list[list[int]] = [[] for _ in range(B)]
    stats = {"prefill_s": 0.0, "steps": 0, "step_s": 0.0, "first_token_s": None, "graphs": 0,
             "graph_error": None, "batches": [], "prefix_len": 0, "prefix_hit": False}
    t0 = time.perf_counter()
    use = _use_graphs(model, use_graphs)
    cancelled = False
    for n, rows in groups.items():
        for c in range(0, len(rows), max_batch):
            if cancelled:
                break
            chunk = rows[c:c + max_batch]
            emb = torch.stack([inputs_embeds[i, T - n:] for i in chunk])  # left padding dropped
            cancelled = not _decode_rows(model, emb, chunk, B, out, max_new_tokens, temperature, top_p,
                                         generator, stops, stop_strings_fn, on_step, prefix_len, use,
                                         stats, t0)
    last_stats.clear()
    last_stats.update(stats, total_s=time.perf_counter() - t0)
    return out


def _decode_rows(model, emb, chunk, B, out, max_new, temperature, top_p, generator, stops,
                 stop_strings_fn, on_step, prefix_len, use_graph, stats, t0) -> bool:
    b, n, _ = emb.shape
    bb = bucket_for(b)
    r = _runner(model, bb, _round_len(n + max_new), use_graph)
    stats["graphs"] += int(r.graph is not None)
    stats["graph_error"] = stats["graph_error"] or r.graph_error
    stats["batches"].append(bb)
    emb = emb.to(device=r.device, dtype=r.dtype)
    if bb > b:  # fill the bucket with copies of the last row; their output is ignored
        emb = torch.cat([emb, emb[-1:].expand(bb - b, -1, -1)])
    tp = time.perf_counter()
    p = _common_prefix(emb) if prefix_len is None else max(0, min(int(prefix_len), n - 1))
    if bb == 1 and prefix_len is None:
        p = 0
    if p > 0:
        models_prefixes = _PREFIXES.setdefault(model, OrderedDict())
        key = (_prefix_key(emb[0, :p]), p)
        hit = models_prefixes.get(key)
        if hit is None:
            r.prefill(emb[:1, :p], 0, rows=slice(0, 1))
            hit = r.read_prefix(p)
            models_prefixes[key] = hit
            while len(models_prefixes) > PREFIX_LRU:
                models_prefixes.popitem(last=False)
        else:
            models_prefixes.move_to_end(key)
            stats["prefix_hit"] = True
        r.copy_prefix(hit, p)
        stats["prefix_len"] = p
    logits = r.prefill(emb[:, p:], p)
    stats["prefill_s"] += time.perf_counter() - tp
    done = [False] * b
    pos = n
    ts = time.perf_counter()
    for step in range(max_new):
        nxt = _pick(logits, temperature, top_p, generator)
        ids = nxt[:b].to("cpu")  # the one sync per step: stop checks need the ids
        if stats["first_token_s"] is None:
            stats["first_token_s"] = time.perf_counter() - t0
        full = torch.full((B,), -1, dtype=torch.long)
        for j, row in enumerate(chunk):
            if done[j]:
                continue
            tok = int(ids[j])
            out[row].append(tok)
            full[row] = tok
            if tok in stops or (stop_strings_fn is not None and stop_strings_fn(out[row])):
                done[j] = True
        if on_step is not None and on_step(full) is False:
            return False
        if all(done) or step == max_new - 1:
            break
        logits = r.step(nxt, pos)
        pos += 1
        stats["steps"] += 1
    if r.device.type == "cuda":
        torch.cuda.synchronize(r.device)
    stats["step_s"] += time.perf_counter() - ts
    return True


def clear(model=None) -> None:
    """Drop captured graphs and caches (for one model, or all)."""
    for store in (_RUNNERS, _PREFIXES):
        if model is None:
            store.clear()
        else:
            store.pop(model, None)
