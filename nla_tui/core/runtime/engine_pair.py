"""The engine's extra AV/AR pair (core/pair_jobs.py): loaded beside the main pair over the
same subject, it explains a token through the one explain path (core/nla/explain.py) with
its own AV and AR. A mixin of Engine, kept out of engine.py.

Its layer comes from its sidecars and may differ from the main pair's. The vector it
reads is the subject's residual at that layer: the main activations when the layers
agree; otherwise the row of every layer's residual the capture keeps for the logit lens,
or, past the lens's memory budget, one capture of that layer (kept for the conversation).

Its explanations are kept per captured conversation (the activations array they were
made from: the engine replaces that array, never mutates it), so an edited branch or a
new conversation never shows another's.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..nla import explain as nla_explain
from ..nla.explain import OnText
from ..options import PAIR_FLAG, PairSpec
from ..pair_jobs import EXTRA, PairInfo
from ..types import Explanation, Sampling, group_by_index


@dataclass
class LoadedPair:
    info: PairInfo
    av: object  # nla.av.Verbalizer
    ar: object  # nla.ar.Reconstructor


def pair_label(spec: PairSpec, av_meta) -> str:
    """What the pair is called: label=, else its sidecar's training label, else the AV's folder."""
    return spec.label or av_meta.pair_label or Path(spec.av).expanduser().resolve().name


class EnginePair:
    """Engine's extra-pair methods (the Engine supplies subject, info, caches, options and
    the conversation fields)."""

    pair: LoadedPair | None = None
    _pair_store: list  # [(activations array, {index: [Explanation]})], the shown one last

    # ------------------------------------------------------------ loading

    def load_extra_pair(self, spec: PairSpec, report=None) -> PairInfo:
        """Load `spec`'s AV and AR beside the loaded main pair (same precision and device),
        after checking both directories against the subject from files alone."""
        from ..models.loading import load_model, load_tokenizers, resolve_checkpoint
        from ..nla.ar import Reconstructor
        from ..nla.av import Verbalizer
        from .precheck import check_extra_pair

        report = report or (lambda m, f, s: None)
        o, info = self.options, self.info
        av_meta, ar_meta, layer = check_extra_pair(spec, self.subject_dir)
        ckpts = {"av": resolve_checkpoint(spec.av), "ar": resolve_checkpoint(spec.ar)}
        tokenizers = load_tokenizers(ckpts)
        models = {}
        # Each in the precision the main pair's model of that role runs in, on the same device.
        quants = {key: (info.quants or {}).get(key) or info.quant for key in ("av", "ar")}
        for key in ("av", "ar"):
            name = f"extra {key}"
            report(name, 0.0, f"loading {ckpts[key].name} ({quants[key]}, {info.device})")
            models[key] = load_model(ckpts[key], quants[key], info.device, None, None, self.caches.quantised,
                                     lambda f, m, k=name: report(k, f, m))
            report(name, 1.0, "loaded")
        variance = ar_meta.fve_variance if ar_meta.fve_variance is not None else o.fve_variance
        av = Verbalizer(models["av"], tokenizers["av"], av_meta)
        ar = Reconstructor(models["ar"], tokenizers["ar"], ar_meta, ckpts["ar"].path, variance)
        models_info = replace(
            info, av=ckpts["av"].name, ar=ckpts["ar"].name, layer=layer,
            revision={**(info.revision or {}), "av": ckpts["av"].revision, "ar": ckpts["ar"].revision},
            injection_scale=av_meta.injection_scale, mse_scale=ar_meta.mse_scale, fve_variance=variance,
            untrained_av=av_meta.untrained, pair_label=av_meta.pair_label, pair_note=av_meta.pair_note,
            placement=info.device, quants={**(info.quants or {}), **quants}, fidelity="", fidelity_drifts=False)
        self.pair = LoadedPair(PairInfo(EXTRA, pair_label(spec, av_meta), models_info), av, ar)
        self._pair_store = []
        return self.pair.info

    def pair_named(self, name: str) -> LoadedPair:
        if self.pair is None or self.pair.info.name != name:
            raise InputError(f"No {name!r} pair is loaded: start with {PAIR_FLAG} av=DIR,ar=DIR to explain a token "
                             "with a second pair.")
        return self.pair

    # ------------------------------------------------------------ its vectors and explanations

    @property
    def pair_explanations(self) -> dict[int, list[Explanation]]:
        """The extra pair's explanations of the shown conversation, per token index, newest first."""
        store = getattr(self, "_pair_store", None)
        if store is None:
            store = self._pair_store = []
        for acts, held in store:
            if acts is self.activations:
                return held
        # A new capture: keep what belongs to conversations the branch tree still holds.
        alive = {id(b.activations) for b in (self.branches.branches.values() if self.branches else [])}
        store[:] = [(a, h) for a, h in store if id(a) in alive]
        store.append((self.activations, {}))
        return store[-1][1]

    def pair_explanations_for(self, activations) -> dict[int, list[Explanation]]:
        """The extra pair's explanations of the conversation captured as `activations` ({} if none)."""
        return next((held for acts, held in getattr(self, "_pair_store", []) if acts is activations), {})

    def pair_vectors(self, indices: list[int]) -> np.ndarray:
        """The subject's residual at the extra pair's layer for these tokens (see the module doc)."""
        pair = self.pair_named(EXTRA)
        self._check_indices(indices)
        layer = pair.info.layer
        if layer == self.info.layer:
            return self.activations[indices]
        ids = [t.token_id for t in self.tokens]
        if self.residuals is not None and len(self.residuals) == len(ids):
            return np.asarray(self.residuals[indices, layer], np.float32)
        from ..models.capture import lens_fits

        if lens_fits(len(ids), len(self.subject.decoder.layers), self.info.d_model):
            self.residuals = self.subject.capture(ids).residuals  # as the logit lens does
            return np.asarray(self.residuals[indices, layer], np.float32)
        held = getattr(self, "_pair_layer_acts", None)
        if held is None or held[0] is not self.activations:
            from ..models.subject import Subject

            at_layer = Subject(self.subject.model, self.subject.tok, layer).capture(ids).activations
            self._pair_layer_acts = held = (self.activations, at_layer)
        return held[1][indices]

    def explain_with_pair(self, indices: list[int], sampling: Sampling = Sampling(), prompt: str | None = None,
                          on_text: OnText | None = None, cancel: threading.Event | None = None,
                          pair: str = EXTRA) -> list[Explanation]:
        """Explain tokens with the extra pair: one AV batch then its AR, through the one explain
        path and the explanation cache (keyed by the pair's own identity, so a hit is what
        running that pair alone gave); kept in pair_explanations."""
        self._need_models()
        loaded = self.pair_named(pair)
        vectors = self.pair_vectors(indices)
        exps = self.caches.explain(
            loaded.info.models, vectors, sampling, prompt, on_text, cancel, indices,
            lambda v, s, p, t, c, i, lab: nla_explain.explain(loaded.av, loaded.ar, v, s, p, i, t, c, lab))
        if exps:
            group_by_index(exps, into=self.pair_explanations, newest_first=True)
        return exps
