"""The headless NLA engine: subject chat + capture, AV explain, AR score.

Everything the TUI does goes through here, so a script can do it too. Not
thread-safe by design: one worker thread (worker.py) owns an Engine.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Callable

import numpy as np

from ..errors import CheckpointError, InputError
from ..fallbacks import with_near_duplicates
from ..models.capture import lens_fits
from ..models.context import check_context
from ..models.lens import logit_lens
from ..models.loading import (Checkpoint, default_device, default_quant, load_model, load_tokenizers,
                              resolve_checkpoint, text_config)
from ..models.subject import Subject
from ..nla.ar import Reconstructor
from ..nla import explain as nla_explain
from ..nla.av import Verbalizer
from ..nla.explain import OnText
from ..nla.presets import Preset, resolve_sources
from ..nla.sentences import with_sentence_scores
from ..nla.sidecar import read_sidecar
from ..fidelity_report import quant_label
from ..options import EngineOptions
from ..types import (REPLY_TOKENS, Candidate, CardMemory, Explanation, Message, ModelInfo, Sampling, Score, TokenInfo,
                     group_by_index)
from .engine_branches import EngineBranches
from .engine_caches import EngineCaches
from .engine_pair import EnginePair


def placement_kwargs(placement, role: str) -> dict:
    from ..models.placement import device_map_for

    return device_map_for(placement, role)


def describe_placement(placement, models) -> str:
    from ..models.placement import describe

    return describe(placement, {r: m.get_memory_footprint() for r, (m, _) in models.items()})


Progress = Callable[[str, float, str], None]  # (model, fraction, message)


class Engine(EngineBranches, EnginePair):
    def __init__(self, options: EngineOptions):
        self.options = options
        self.info: ModelInfo | None = None
        self.subject: Subject | None = None
        self.av: Verbalizer | None = None
        self.ar: Reconstructor | None = None
        self.messages: list[Message] = []
        self.tokens: list[TokenInfo] = []
        self.activations = np.zeros((0, 0), np.float32)
        self.residuals = None  # every layer's residual [T, L, d] for the logit lens, or None
        self._lens: dict[int, list[list[Candidate]]] = {}  # the lens per token index, computed once
        self.explanations: dict[int, list[Explanation]] = {}
        self.branches = None  # the conversation's branch tree (engine_branches.py); None before a capture
        self.last_recapture: dict = {}  # the last edit's re-capture: tokens, where the subject ran from
        self.steered: list = []  # steered continuations (runtime/steer.py); the conversation itself never changes
        self.placement_text = ""
        self.checkpoints: dict[str, Checkpoint] = {}  # what load() read, by role (the fidelity check reloads from here)
        self.cards: list[int] = []  # CUDA devices holding a model (for gpu_memory)
        self.caches = EngineCaches(options.cache_dir, options.cache)
        # Explain-all: "auto" parks the subject and AR off the AV's card when that saves AV passes.
        self.park_policy = options.park or "auto"
        self.park_state: dict = {"parked": []}
        self.last_explain_plan: dict = {}
        self.start_capture_s: float | None = None  # the AV's decode graph captured during load (CUDA)
        self.subject_dir = None  # the subject's checkpoint directory (the extra pair is checked against it)
        self.pair = None  # the extra AV/AR (--extra-pair; engine_pair.py), None when there is none
        self._pair_store: list = []

    @classmethod
    def from_options(cls, **kw) -> "Engine":
        return cls(EngineOptions(**kw))

    # ------------------------------------------------------------ loading

    def load(self, progress: Progress | None = None) -> ModelInfo:
        report = progress or (lambda m, f, s: None)
        o = self.options
        o.check_quants()
        preset, sources = resolve_sources(o, report)
        ckpts: dict[str, Checkpoint] = {k: resolve_checkpoint(v) for k, v in sources.items()}
        # Only the parts that really come from the demo are labelled demo:…; a directory
        # the user gave (--subject DIR --preset demo) keeps its own name.
        demo = preset is not None and preset.name == "demo"
        ckpts = {k: replace(c, name=f"demo:{k}" if demo and getattr(o, k) is None else sources[k])
                 for k, c in ckpts.items()}
        av_meta, ar_meta = read_sidecar(ckpts["av"].path), read_sidecar(ckpts["ar"].path)
        layer = self._layer(preset, av_meta.extraction_layer, ar_meta.extraction_layer)
        self.subject_dir = ckpts["subject"].path
        if o.extra_pair is not None:  # judged from files before any model loads
            from .precheck import check_extra_pair

            check_extra_pair(o.extra_pair, self.subject_dir)
        device = o.device or default_device()
        quants = self._quants(preset, ckpts, device)
        placement = self._place(ckpts, quants, device)
        models = {}
        report("subject", 0.0, "loading tokenizers")
        tokenizers = load_tokenizers(ckpts)
        precapture = None
        try:
            for key in ("subject", "av", "ar"):
                kw = placement_kwargs(placement, key) if placement else {}
                where = placement.label(key) if placement else device
                report(key, 0.0, f"loading {ckpts[key].name} ({quants[key]}, {where})")
                models[key] = (load_model(ckpts[key], quants[key], device, kw.get("device_map"), kw.get("max_memory"),
                                          self.caches.quantised, lambda f, m, k=key: report(k, f, m)),
                               tokenizers[key])
                report(key, 1.0, "loaded")
                if key == "av":
                    d = text_config(models["subject"][0]).hidden_size
                    if d != av_meta.d_model:
                        raise CheckpointError(f"The subject's hidden size is {d} but the AV expects "
                                              f"d_model={av_meta.d_model}: this AV/AR pair was trained on another model.")
                    av = Verbalizer(*models["av"], av_meta)
                    # The first explanation's decode graph is captured while the AR loads (on CUDA;
                    # models/precapture.py), not after it: the start is the reads, not reads + capture.
                    precapture = av.start_precapture()
        finally:
            if precapture is not None:
                precapture.join()
        self.placement_text = describe_placement(placement, models) if placement else device
        self.cards = sorted({p.device.index or 0 for m, _ in models.values() for p in m.parameters()
                             if p.device.type == "cuda"})
        self.subject = Subject(*models["subject"], layer=layer)
        self.av = av
        self.start_capture_s = precapture.seconds if precapture is not None else None
        variance = o.fve_variance if o.fve_variance is not None else (
            ar_meta.fve_variance if ar_meta.fve_variance is not None else (preset.fve_variance if preset else None))
        self.ar = Reconstructor(*models["ar"], ar_meta, ckpts["ar"].path, variance)
        self.info = ModelInfo(
            preset=preset.name if preset else None, subject=ckpts["subject"].name, av=ckpts["av"].name,
            ar=ckpts["ar"].name, layer=layer, quant=quant_label(quants), device=device, d_model=d,
            revision={k: c.revision for k, c in ckpts.items()}, injection_scale=av_meta.injection_scale,
            mse_scale=ar_meta.mse_scale, fve_variance=variance, untrained_av=av_meta.untrained,
            placement=self.placement_text, pair_label=av_meta.pair_label, pair_note=av_meta.pair_note,
            quants=dict(quants))
        self.checkpoints = ckpts
        self.activations = np.zeros((0, d), np.float32)
        if o.extra_pair is not None:
            self.load_extra_pair(o.extra_pair, report)
        from .fidelity_check import note_cached_verdict

        note_cached_verdict(self)  # the self-check's verdict for these models and precisions, if it ran before
        return self.info

    def _quants(self, preset: Preset | None, ckpts: dict[str, Checkpoint], device: str) -> dict[str, str]:
        """The precision of each model: --quant (one for all, or auto: the highest that fits,
        subject first), then --subject-quant for the subject alone."""
        o = self.options
        fixed = {"subject": o.subject_quant} if o.subject_quant else {}
        if o.quant == "auto":
            from ..models.quant_choice import choose_quants

            return choose_quants(self._configs(ckpts), device, fixed, self.options.devices,
                                 context_tokens=self._context_tokens())
        quant = o.quant or (preset.cuda_quant if preset and preset.cuda_quant and device.startswith("cuda") else None) \
            or default_quant(device)
        return {**{r: quant for r in ("subject", "av", "ar")}, **fixed}

    @staticmethod
    def _configs(ckpts: dict[str, Checkpoint]) -> dict:
        from transformers import AutoConfig

        return {r: AutoConfig.from_pretrained(str(c.path)) for r, c in ckpts.items()}

    def _place(self, ckpts: dict[str, Checkpoint], quants: dict[str, str], device: str):
        """On CUDA, decide which card(s) each model goes to, from configs alone."""
        if not device.startswith("cuda") or (device != "cuda" and not self.options.devices):
            return None  # one named card, or CPU: everything goes there
        from ..models import placement as pl

        explicit = pl.parse_devices(self.options.devices or "")
        sizes = pl.role_sizes(self._configs(ckpts), quants, self._context_tokens())
        return pl.plan_placement(sizes, pl.gpu_free_memory(), explicit, quants["subject"])

    def _context_tokens(self) -> dict[str, int] | None:
        n = self.options.subject_context_tokens
        return {"subject": n} if n else None

    def _layer(self, preset: Preset | None, av_layer: int | None, ar_layer: int | None) -> int:
        known = {v for v in (av_layer, ar_layer) if v is not None}
        if len(known) > 1:
            raise CheckpointError(f"The AV says layer {av_layer} but the AR says layer {ar_layer}: not a pair.")
        layer = self.options.layer if self.options.layer is not None else (
            known.pop() if known else (preset.layer if preset else None))
        if layer is None:
            raise CheckpointError("Neither sidecar names the extraction layer; pass --layer K.")
        if ar_layer is not None and layer != ar_layer:
            raise InputError(f"--layer {layer} does not match the AR, which reconstructs layer {ar_layer}.")
        return layer

    def _need_models(self) -> None:
        if self.subject is None:
            raise InputError("Models are not loaded yet (call load() first).")
        from ..models.parking import ensure_unparked

        ensure_unparked(self.park_state)  # an explain-all that could not bring a model back

    def gpu_memory(self) -> list[CardMemory]:
        """Memory this process holds on each card a model lives on (none on CPU)."""
        if not self.cards:
            return []
        import torch

        return [CardMemory(i, torch.cuda.memory_allocated(i), torch.cuda.get_device_properties(i).total_memory)
                for i in self.cards]

    @property
    def counters(self) -> dict[str, int]:
        return {"subject_forward": self.subject.forward_calls if self.subject else 0,
                "av_generate": self.av.generate_calls if self.av else 0,
                "ar_forward": self.ar.forward_calls if self.ar else 0,
                "subject_tokens": self.subject.forward_tokens if self.subject else 0}

    # ------------------------------------------------------------ conversation

    def _capture(self, messages: list[Message], progress: Callable[[int, int], None] | None = None,
                 cancel: threading.Event | None = None, new_tree: bool = True) -> None:
        """Capture `messages` as the shown conversation: the root of a new branch tree, or
        (`new_tree=False`, a chat turn) the shown branch grown by a turn."""
        ids, roles, turns = self.subject.tokenize(messages)
        check_context(len(ids), self.subject.context_limit, self.info.subject)
        cap = self.caches.capture(self.info, ids, lambda i: self.subject.capture(i, progress=progress, cancel=cancel))
        self._record(list(messages), self.subject.token_infos(ids, roles, turns, cap), cap, new_tree)

    def set_conversation(self, messages: list[Message], progress: Callable[[int, int], None] | None = None,
                         cancel: threading.Event | None = None) -> None:
        """Teacher-force a given conversation (e.g. an agent transcript with tool calls) and
        capture it in chunks; `progress(done, total)` after each chunk. The length is
        checked against the subject's context before any forward pass."""
        self._need_models()
        if not messages:
            raise InputError("The conversation is empty: give at least one message.")
        for m in messages:
            if m.role not in ("system", "user", "assistant", "tool"):
                raise InputError(f"Unknown role {m.role!r}: messages need role system, user, assistant or tool.")
        self._capture(messages, progress, cancel)

    def prompt_tokens(self, text: str) -> list[TokenInfo]:
        """The tokens the subject will see for the next turn, before the reply (uncaptured)."""
        msgs = self.messages + [Message("user", text)]
        ids, roles, turns = self.subject.tokenize(msgs, add_generation_prompt=True)
        out, same_prefix = [], True
        for k, i in enumerate(ids):
            prev = self.tokens[k] if k < len(self.tokens) else None
            same_prefix = same_prefix and prev is not None and prev.token_id == i
            if same_prefix:
                # The earlier turns are unchanged: keep their captured norm and candidates.
                out.append(replace(prev, role=roles[k], turn=turns[k]))
            else:
                out.append(TokenInfo(k, i, self.subject.tok.decode([i]), roles[k], turns[k], 0.0, []))
        return out

    def chat(self, text: str, max_new_tokens: int = REPLY_TOKENS, on_delta: Callable[[str], None] | None = None,
             cancel: threading.Event | None = None, progress: Callable[[int, int], None] | None = None) -> str:
        """Add a user turn, stream the reply, then capture the whole conversation."""
        self._need_models()
        if not text or not text.strip():
            raise InputError("The prompt is empty: type something to send to the subject model.")
        msgs = self.messages + [Message("user", text)]
        prompt_ids, _, _ = self.subject.tokenize(msgs, add_generation_prompt=True)
        check_context(len(prompt_ids), self.subject.context_limit, self.info.subject, max_new_tokens)
        reply = self.subject.generate(msgs, max_new_tokens, on_delta, cancel)
        self._capture(msgs + [Message("assistant", reply)], progress, new_tree=False)
        return reply

    # ------------------------------------------------------------ explain

    def _check_indices(self, indices: list[int]) -> None:
        bad = [i for i in indices if not 0 <= i < len(self.tokens)]
        if bad:
            raise InputError(f"Token index {bad[0]} is out of range: the conversation has {len(self.tokens)} tokens "
                             f"(0..{len(self.tokens) - 1}).")

    def logit_lens(self, index: int) -> list[list[Candidate]] | None:
        """The subject's own top-3 at `index` when each layer's residual is read through the
        final norm and unembedding (core/models/lens.py), layer 0 first; None when the
        conversation is over the lens's memory budget (capture.lens_fits). A capture that
        came from a cache entry without residuals is recaptured once, uncached."""
        self._need_models()
        self._check_indices([index])
        if index in self._lens:
            return self._lens[index]
        if self.residuals is None or index >= len(self.residuals):
            ids = [t.token_id for t in self.tokens]
            if not lens_fits(len(ids), len(self.subject.decoder.layers), self.info.d_model):
                return None
            self.residuals = self.subject.capture(ids).residuals
        top_ids, top_probs = logit_lens(self.subject, self.residuals[index])
        decode = self.subject.tok.decode
        self._lens[index] = [[Candidate(int(t), decode([int(t)]), float(p)) for t, p in zip(ti, tp)]
                             for ti, tp in zip(top_ids.tolist(), top_probs.tolist())]
        return self._lens[index]

    def with_sentence_fidelity(self, exp: Explanation) -> Explanation:
        """`exp` with each sentence scored alone and left out (core/nla/sentences.py, one AR
        pass), also in self.explanations; unchanged if already scored or not a conversation token."""
        self._need_models()
        if exp.sentences is not None or exp.score is None or not 0 <= exp.index < len(self.activations):
            return exp
        new = with_sentence_scores(self.ar, exp, self.activations[exp.index])
        held = self.explanations.get(exp.index, [])
        self.explanations[exp.index] = [new if e is exp else e for e in held]
        return new

    def explain_vectors(self, vectors: np.ndarray, sampling: Sampling = Sampling(), prompt: str | None = None,
                        on_text: OnText | None = None,
                        cancel: threading.Event | None = None, indices: list[int] | None = None) -> list[Explanation]:
        """AV then AR for one batch of vectors (core/nla/explain.py); cached ones (same pair,
        vector, prompt, sampling) skip both. `on_text(index, text)` streams, labelled by
        `indices` (row numbers when there are none)."""
        self._need_models()
        return self.caches.explain(self.info, vectors, sampling, prompt, on_text, cancel, indices,
                                   lambda v, s, p, t, c, i, lab: nla_explain.explain(self.av, self.ar, v, s, p, i, t, c, lab))

    def explain(self, indices: list[int], sampling: Sampling = Sampling(), prompt: str | None = None,
                on_delta: OnText | None = None, cancel: threading.Event | None = None,
                batch_size: int | None = None,
                on_batch: Callable[[list[Explanation]], None] | None = None) -> list[Explanation]:
        """Explain the tokens at `indices` (explain_planned over their activations); results are
        also kept in self.explanations, and one text given to many tokens is flagged."""
        self._need_models()
        self._check_indices(indices)

        def keep(exps: list[Explanation]) -> None:
            group_by_index(exps, into=self.explanations, newest_first=True)
            if on_batch and exps:
                on_batch(exps)

        out = self.explain_planned(self.activations[indices], indices, sampling, prompt, on_delta, cancel,
                                   batch_size, keep)
        return self._flag_near_duplicates(out)

    def explain_planned(self, vectors: np.ndarray, labels: list[int], sampling: Sampling = Sampling(),
                        prompt: str | None = None, on_text: OnText | None = None,
                        cancel: threading.Event | None = None, batch_size: int | None = None,
                        on_batch: Callable[[list[Explanation]], None] | None = None,
                        on_pass: Callable[[int], None] | None = None) -> list[Explanation]:
        """AV then AR for many vectors (`labels`: what each explanation's index says), the one
        batched path of explain-all and the corpus sweep. Without a batch_size,
        explain_all.plan_for sizes the batch from free memory and may park the subject and AR
        in host memory for all the AV passes of this call (parking.py: once per call, so a
        caller with many rows gains by asking once). `on_batch` gets each batch as it is
        scored, `on_pass` the number of rows each AV pass wrote."""
        from .explain_all import explain_parked, plan_for

        self._need_models()
        plan = None
        if batch_size is None and len(labels) > 1:
            plan = plan_for(self.av, {"subject": self.subject.model, "ar": self.ar.model}, self.park_policy,
                            len(labels), sampling.max_new_tokens)
        batch_size = batch_size or (plan.batch if plan else 1)
        self.last_explain_plan = {"park": False, "batch": batch_size,
                                  "reason": plan.reason if plan else "one token" if len(labels) == 1
                                  else "batch size given"}
        if plan is not None and plan.park:
            out, self.last_explain_plan = explain_parked(
                self.av, self.ar, self.subject.model, self.caches, self.info, vectors, list(labels),
                sampling, prompt, on_text, cancel, on_batch, plan, self.park_state, on_pass)
            return out
        out: list[Explanation] = []
        for b in range(0, len(labels), batch_size):
            if cancel is not None and cancel.is_set():
                break
            chunk = list(labels[b:b + batch_size])
            exps = self.explain_vectors(vectors[b:b + batch_size], sampling, prompt, on_text, cancel, chunk)
            if on_pass and exps:
                on_pass(len(exps))
            if on_batch:
                on_batch(exps)
            out.extend(exps)
        return out

    def _flag_near_duplicates(self, out: list[Explanation]) -> list[Explanation]:
        """One text for many different tokens is the AV's fallback (core/fallbacks.py): flag it
        across what was just explained, here and in self.explanations."""
        if len(out) < 2:
            return out
        flagged = with_near_duplicates(out, {t.index: t.text for t in self.tokens})
        for old, new in zip(out, flagged):
            if new is not old:
                held = self.explanations.get(old.index, [])
                self.explanations[old.index] = [new if e is old else e for e in held]
        return flagged

    def explain_rows(self, vectors: np.ndarray, sampling: Sampling = Sampling(), prompt: str | None = None,
                     batch_size: int | None = None, on_batch: Callable[[list[Explanation]], None] | None = None,
                     cancel: threading.Event | None = None) -> list[Explanation]:
        """Explain any vectors (`explain-vectors`: SAE rows, steering vectors), row r as index r,
        in AV batches sized like explain's (16 on CPU, what the AV card's free memory holds on
        CUDA), never all rows in one pass: 16k rows at 200 tokens would need ~150 GB of KV cache."""
        self._need_models()
        vectors = np.asarray(vectors, np.float32)
        size = batch_size or self.explain_batch_size(sampling.max_new_tokens, rows=len(vectors))
        out: list[Explanation] = []
        for b in range(0, len(vectors), size):
            if cancel is not None and cancel.is_set():
                break
            rows = list(range(b, min(b + size, len(vectors))))
            exps = self.explain_vectors(vectors[rows], sampling, prompt, None, cancel, rows)
            out.extend(exps)
            if on_batch and exps:
                on_batch(exps)
        return out

    def counting_rows(self, on_row_done: Callable[[int], None]):
        """Within this block, on_row_done(row) runs as each AV row finishes (RowProgress)."""
        self._need_models()
        return self.av.counting_rows(on_row_done)

    def explain_batch_size(self, max_new_tokens: int, cap: int = 160, rows: int = 160) -> int:
        """Rows per AV pass for `rows` explanations without parking: the bf16 KV cache that fits in
        the AV card's free memory (explain_all.py), 16 on CPU. Throughput grows with the batch
        (BENCHMARKS.md: ~140 tok/s at 8 rows, ~1,750 at 150 on an H100)."""
        from .explain_all import CPU_BATCH, kv_bytes_per_row
        from ..models.parking import free_bytes, rows_that_fit

        if self.av.device.type != "cuda":
            return CPU_BATCH
        return rows_that_fit(free_bytes(self.av.device), kv_bytes_per_row(self.av, max_new_tokens), cap, rows)

    def explain_samples(self, index: int, samples: int, sampling: Sampling, prompt: str | None = None,
                        cancel: threading.Event | None = None) -> list[Explanation]:
        """Draw `samples` explanations (seeds seed, seed+1, …) and rank them by AR fidelity."""
        self._check_indices([index])
        temp = sampling.temperature if sampling.temperature > 0 else 1.0
        drawn = []
        for k in range(samples):
            if cancel is not None and cancel.is_set():
                break
            s = replace(sampling, temperature=temp, seed=sampling.seed + k)
            drawn += self.explain_vectors(self.activations[[index]], s, prompt, None, cancel, [index])
        drawn.sort(key=lambda e: -(e.score.fidelity if e.score else -9))
        if drawn:
            self.explanations[index] = drawn + self.explanations.get(index, [])
        return drawn

    def score(self, text: str, vector: np.ndarray) -> Score:
        self._need_models()
        return self.ar.score([text], np.asarray(vector, np.float32)[None])[0]
