"""Reusing what the session already loaded (tests/conftest.py: demo_tokenizer, demo_engine).

Loading Gemma 3's tokenizer costs ~6 s on 2 cores (a 33 MB tokenizer.json parsed in
Python) and Engine.load loads three of them (subject, AV and AR ship the same files), so
a real load is ~25 s of which ~19 s are tokenizers. Tests about what Engine.load, `run`
or `check` *do* with checkpoints (sources, hub ids, sidecars, validation, ModelInfo,
the session written) run the real code with only these answered from memory:

- load_tokenizer: a checkpoint whose tokenizer files are byte-identical to the demo's
  gets the already loaded demo tokenizer (the same object, as the tests that share
  demo_engine's models already do); any other checkpoint loads its own.
- load_model (only for the roles asked for): a demo checkpoint in fp32 on CPU gets the
  demo engine's model for that role; anything else loads from disk.

Reading the files themselves stays covered: the demo_engine fixture loads for real, and
test_core_cli_worker.py::test_run_writes_a_valid_session runs `run` in its own process.
Tests that change a shared tokenizer must not (copy.copy it first)."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import pytest

from nla_tui.core.models.loading import resolve_checkpoint, tokenizer_digest

_DIGESTS: dict[str, str] = {}


def _demo_digest(demo_dir: Path) -> str:
    key = str(Path(demo_dir).resolve())
    if key not in _DIGESTS:
        _DIGESTS[key] = tokenizer_digest(resolve_checkpoint(demo_dir))
    return _DIGESTS[key]


@contextlib.contextmanager
def reusing_demo_loads(demo_tokenizer, demo_paths, engine=None, models=()):
    """While active, the loads above are answered from memory. `models`: the roles
    ("subject", "av", "ar") whose demo weights come from `engine` instead of disk."""
    import nla_tui.core.models.loading as loading_mod  # Engine.load and check: load_tokenizers
    import nla_tui.core.runtime.engine as engine_mod
    import nla_tui.core.runtime.precheck as precheck_mod

    demo = _demo_digest(demo_paths["av"])
    demo_dirs = {Path(demo_paths[r]).resolve(): r for r in models}
    assert not models or engine is not None
    with pytest.MonkeyPatch.context() as mp:
        for mod in (loading_mod, precheck_mod):
            # Anything else goes to what was there (the real loader, or a test's own guard).
            def load_tokenizer(ckpt, _load=mod.load_tokenizer):
                return demo_tokenizer if tokenizer_digest(ckpt) == demo else _load(ckpt)
            mp.setattr(mod, "load_tokenizer", load_tokenizer)
        if models:
            def load_model(ckpt, quant, device, device_map=None, *args, _load=engine_mod.load_model, **kwargs):
                role = demo_dirs.get(Path(ckpt.path).resolve())
                if role and quant == "fp32" and device == "cpu" and device_map is None:
                    return getattr(engine, role).model
                return _load(ckpt, quant, device, device_map, *args, **kwargs)
            mp.setattr(engine_mod, "load_model", load_model)
        yield


# What a test (or the API it serves) changes on the session-wide demo engine: its
# conversation, explanations, branches, lens, parking choices and on-disk caches (a test
# points them at its tmp_path). The loaded models and the options are never swapped.
ENGINE_STATE = ("messages", "tokens", "activations", "residuals", "_lens", "explanations", "steered",
                "park_policy", "park_state", "last_explain_plan", "caches", "branches", "last_recapture",
                "pair", "_pair_store")


def _saved(value):
    """Lists and dicts copied two levels deep (a dict of explanation lists is appended to in
    place); anything else (arrays, the caches object) is replaced, never edited, so kept as is."""
    if hasattr(value, "snapshot"):  # the branch tree: branches are added and shown in place
        return value.snapshot()
    if isinstance(value, dict):
        return {k: copy.copy(v) if isinstance(v, (list, dict)) else v for k, v in value.items()}
    if isinstance(value, list):
        return list(value)
    return value


@contextlib.contextmanager
def kept_engine_state(engine):
    """Puts `engine`'s ENGINE_STATE back as it was, however the block ends."""
    saved = {name: _saved(getattr(engine, name)) for name in ENGINE_STATE}
    try:
        yield engine
    finally:
        for name, value in saved.items():
            setattr(engine, name, value)
        if engine.branches is not None:  # the engine's conversation is its shown branch's own lists and dict
            shown = engine.branches.shown
            shown.messages, shown.tokens, shown.activations = engine.messages, engine.tokens, engine.activations
            shown.explanations = engine.explanations


def engine_sharing_models(demo_engine, messages=None):
    """An Engine of its own (conversation, caches, branches) over the demo engine's loaded
    subject, AV and AR: a test can set its own conversation without touching the shared one."""
    from nla_tui.core.runtime.engine import Engine

    eng = Engine(demo_engine.options)
    eng.info, eng.subject, eng.av, eng.ar = demo_engine.info, demo_engine.subject, demo_engine.av, demo_engine.ar
    if messages is not None:
        eng.set_conversation(list(messages))
    return eng
