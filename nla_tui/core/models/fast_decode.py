"""Fast autoregressive decoding from `inputs_embeds`, used for AV explanations.

Eager `generate` on a 27B nf4 model spends ~180 ms of CPU per step launching
~5,500 kernels for ~24 ms of GPU work. Here the KV cache is our own static one
(fixed addresses and shapes), so the decode step is captured once per (batch
bucket, cache length) into a `torch.cuda.CUDAGraph` and replayed. No torch.compile.

- Our duck-typed cache needs only `update(k, v, layer_idx, ...)`, which both
  transformers 5.17 and 5.24 call; we pass ready masks (a dict per layer type),
  so transformers' cache and mask machinery (which changed between them) is unused.
- Every layer keeps a full-length cache; sliding-window layers are handled by the
  mask (`kv > q - window`, HF's semantics).
- Rows are grouped by true length (one AV template: all rows), batches rounded up
  to a bucket by repeating a row. The prefix shared by all rows (the template
  before the injection slot) is computed once and kept in a small LRU.
- On CPU the same static-cache path runs eagerly; tests compare its greedy output
  with HF `generate` token for token.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import threading
import time
import weakref
from collections import OrderedDict
from typing import Callable, Iterable, Sequence

import torch

from .fusion import fuse
from .fast_attention import ATTN_NAME, ORIG_IMPL, StaticKV, register_attention
from .loading import text_config
from .placement import layer_devices, quant_state_to_device
from .sampling import sample_next

log = logging.getLogger(__name__)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256)
LEN_QUANTUM = 64  # cache lengths are rounded up to this, so graphs get reused
MAX_RUNNERS = 4  # captured graphs (+ their KV caches) kept per model
PREFIX_LRU = 8

# Per model: runners and cached prefixes. Weak keys: dropping a model frees them.
_RUNNERS: "weakref.WeakKeyDictionary[torch.nn.Module, OrderedDict]" = weakref.WeakKeyDictionary()
_PREFIXES: "weakref.WeakKeyDictionary[torch.nn.Module, OrderedDict]" = weakref.WeakKeyDictionary()

#: Figures from the last `decode` call (the benchmark reads them).
last_stats: dict = {}


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


_CAPTURE_LOCK = threading.Lock()

class _Runner:
    """Static cache + (on CUDA) a captured decode step for one (batch, length)."""

    def __init__(self, model, batch: int, max_len: int, use_graph: bool):
        self._model = weakref.ref(model)  # held strongly, the weak-keyed cache could never drop it
        self.batch = batch
        self.max_len = max_len
        cfg = self.text_cfg = text_config(model)
        register_attention()
        self.n_layers = cfg.num_hidden_layers
        self.layer_types = list(getattr(cfg, "layer_types", None) or [])
        self.window = getattr(cfg, "sliding_window", None)
        self.eager_mask = getattr(cfg, "_attn_implementation", "sdpa") == "eager"
        self.device = model.get_input_embeddings().weight.device
        self.dtype = model.get_input_embeddings().weight.dtype
        self.kv = StaticKV(self.n_layers, batch, max_len)
        # Allocate up front (not lazily) so a cached prefix can be copied in before any forward.
        heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        devices = layer_devices(model, self.n_layers, self.device)
        for i in range(self.n_layers):
            self.kv.keys.append(torch.zeros((batch, heads, max_len, head_dim), dtype=self.dtype, device=devices[i]))
            self.kv.values.append(torch.zeros_like(self.kv.keys[i]))
        # One graph cannot span several GPUs (accelerate splits): those run eagerly.
        use_graph = use_graph and len(set(devices)) == 1
        self.cache_kw = _cache_kwarg(model)
        self.arange = torch.arange(max_len, device=self.device)
        self.ids = torch.zeros((batch, 1), dtype=torch.long, device=self.device)
        self.pos = torch.zeros((1,), dtype=torch.long, device=self.device)
        self.graph = None
        self.graph_error: str | None = None
        self.logits = None
        if use_graph and self.device.type == "cuda":
            self._capture()

    @property
    def model(self):
        return self._model()

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
        # Our attention only inside our own calls (and so inside the captured graph).
        cfg = self.text_cfg
        prev = cfg._attn_implementation_internal
        ORIG_IMPL[id(cfg)] = prev or "sdpa"
        cfg._attn_implementation_internal = ATTN_NAME
        try:
            return self.model(**kwargs).logits[:, -1, :]
        finally:
            cfg._attn_implementation_internal = prev

    def _step_body(self):
        self.kv.write_idx = self.pos
        return self._forward(self.pos, ids=self.ids)

    def _capture(self):
        # One capture at a time (replicas capture in threads); the verified two-card setup.
        with _CAPTURE_LOCK:
            self._capture_locked()

    def _capture_locked(self):
        quant_state_to_device(self.model, self.device)
        why = fuse(self.model)  # compiled RMSNorm + rotary inside the graph (fusion.py)
        if why is not None and self.device.type == "cuda":
            log.info("decode step not fused: %s", why)
        # Warm up on a side stream (allocates the cache, sets bnb compute types), then
        # capture. Writing at the last slot is harmless: that slot is masked out until
        # decoding reaches it, and then it is overwritten first.
        self.pos.fill_(self.max_len - 1)
        try:
            # Work on the model's card (an AV on cuda:1, or a replica in its own thread).
            with torch.cuda.device(self.device):
                s = torch.cuda.Stream(device=self.device)
                s.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(s):
                    for _ in range(2):
                        self._step_body()
                torch.cuda.current_stream(self.device).wait_stream(s)
                # The warm-up's freed blocks sit in the general pool, which the graph's private
                # pool cannot reuse; under a memory cap they would count twice. Free them first.
                torch.cuda.synchronize(self.device)
                torch.cuda.empty_cache()
                g = torch.cuda.CUDAGraph()
                # Capture on s, a stream of this card: torch's default capture stream belongs to
                # the card of the first capture in the process, and a second card's capture
                # on it failed (bench multigpu). thread_local: other threads' CUDA calls are fine.
                with torch.cuda.graph(g, stream=s, capture_error_mode="thread_local"):
                    self.logits = self._step_body()
            self.graph = g
        except Exception as exc:  # fall back to eager steps, but say why
            self.graph, self.logits = None, None
            self.graph_error = f"{type(exc).__name__}: {exc}"
            log.warning("CUDA graph capture failed on %s (batch %d), decoding eagerly (slower): %s",
                        self.device, self.batch, self.graph_error)
            if self.device.type == "cuda":
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


def _runner(model, batch: int, max_len: int, use_graph: bool, tag: str = "") -> _Runner:
    runners = _RUNNERS.setdefault(model, OrderedDict())
    key = (batch, max_len, use_graph, tag)
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
            _runner(model, bucket_for(b), _round_len(max_len), use)
    return time.perf_counter() - t


def captured_runner(model, batch: int, max_len: int, tag: str = "") -> "_Runner | None":
    """The runner `warmup(model, [batch], max_len)` made (None if there is none): its `graph`
    is the captured step, `graph_error` why capture failed."""
    key = (bucket_for(batch), _round_len(max_len), _use_graphs(model, None), tag)
    return _RUNNERS.get(model, {}).get(key)


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


@torch.inference_mode()
def decode(model, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None,
           max_new_tokens: int = 200, temperature: float = 0.0, top_p: float = 1.0,
           generator: torch.Generator | None = None, stop_token_ids: Sequence[int] | set | None = None,
           stop_strings_fn: Callable[[list[int]], bool] | None = None,
           on_step: Callable[[torch.Tensor], bool] | None = None, *,
           prefix_len: int | None = None, max_batch: int = 64, use_graphs: bool | None = None,
           graph_tag: str = "") -> list[list[int]]:
    """Generate up to `max_new_tokens` per row from `inputs_embeds` [B, T, d].

    attention_mask [B, T] may left-pad rows of different lengths; padding is
    stripped and rows are grouped by true length. Returns the new token ids per
    row, ending with the stop token when one was produced (as HF generate does).
    stop_strings_fn(ids_so_far) -> True stops that row (e.g. `</explanation>`).
    on_step(new_ids [B] on CPU, -1 for rows not decoding this step) -> False cancels.
    prefix_len: length of a prefix shared by every call (AV template before the
    injection slot); None = detect it across rows of this call.
    graph_tag: runners (and their captured graphs) are kept per tag. A forward hook
    present at capture time is baked into the graph, so a call made under a hook
    (steering.py) passes its own tag and never shares a graph with plain decoding.
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
                                         stats, t0, graph_tag)
    last_stats.clear()
    last_stats.update(stats, total_s=time.perf_counter() - t0)
    return out


def _decode_rows(model, emb, chunk, B, out, max_new, temperature, top_p, generator, stops,
                 stop_strings_fn, on_step, prefix_len, use_graph, stats, t0, graph_tag="") -> bool:
    b, n, _ = emb.shape
    bb = bucket_for(b)
    r = _runner(model, bb, _round_len(n + max_new), use_graph, graph_tag)
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
    # On CUDA the next step is launched before the host reads this step's ids, so the
    # stop checks and callbacks run while the GPU works (~5% at batch 160). Rows keep
    # decoding after they stop anyway, so the early launch changes no output.
    cuda = r.device.type == "cuda"
    host = torch.empty(bb, dtype=torch.long, pin_memory=True) if cuda else None
    copied = torch.cuda.Event() if cuda else None
    for step in range(max_new):
        nxt = sample_next(logits, temperature, top_p, generator)
        last = step == max_new - 1
        if cuda:
            host.copy_(nxt, non_blocking=True)
            copied.record()
            if not last:
                logits = r.step(nxt, pos)
                pos += 1
                stats["steps"] += 1
            copied.synchronize()
            ids = host[:b].tolist()
        else:
            ids = nxt[:b].tolist()
        if stats["first_token_s"] is None:
            stats["first_token_s"] = time.perf_counter() - t0
        full = torch.full((B,), -1, dtype=torch.long)
        for j, row in enumerate(chunk):
            if done[j]:
                continue
            tok = ids[j]
            out[row].append(tok)
            full[row] = tok
            if tok in stops or (stop_strings_fn is not None and stop_strings_fn(out[row])):
                done[j] = True
        if on_step is not None and on_step(full) is False:
            return False
        if all(done) or last:
            break
        if not cuda:
            logits = r.step(nxt, pos)
            pos += 1
            stats["steps"] += 1
    if cuda:
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
