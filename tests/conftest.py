"""Shared fixtures. The demo engine (real Gemma 3 270M on CPU, fp32) loads once per run;
the demo pair is built once into the user cache (NLA_TUI_CACHE overrides where)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests that exercise the on-disk caches turn them on explicitly; everywhere else a
# warm user cache would change call counts and streaming between runs.
os.environ.setdefault("NLA_TUI_NO_CACHE", "1")


@pytest.fixture(scope="session")
def demo_paths():
    from nla_tui.core.nla.demo import ensure_demo

    return ensure_demo()


@pytest.fixture(scope="session")
def demo_engine(demo_paths, demo_tokenizer):
    """A loaded Engine on the demo preset with one short real chat turn captured.
    Shared by the whole run; keep_demo_engine_state puts back what a test changes.
    Its weights load from disk; its three tokenizers are demo_tokenizer (subject, AV and
    AR ship byte-identical tokenizer files, and each load is ~6 s on 2 cores)."""
    from nla_tui.core.runtime.engine import Engine
    from tests._support_engine import reusing_demo_loads

    engine = Engine.from_options(preset="demo", device="cpu", quant="fp32")
    with reusing_demo_loads(demo_tokenizer, demo_paths):
        engine.load()
    engine.chat("What is the capital of France?", max_new_tokens=8)
    return engine


@pytest.fixture(scope="session")
def demo_tokenizer(demo_paths):
    """The demo AV's tokenizer, loaded once. Shared: a test that edits it edits a copy."""
    from nla_tui.core.models.loading import load_tokenizer, resolve_checkpoint

    return load_tokenizer(resolve_checkpoint(demo_paths["av"]))


@pytest.fixture(autouse=True)
def keep_demo_engine_state(request):
    """Every test that uses demo_engine (directly or through another fixture) gets it back
    as it found it: conversation, explanations, branches (tests/_support_engine.py
    ENGINE_STATE). A module-scoped fixture that changes it wraps itself in kept_engine_state."""
    if "demo_engine" not in request.fixturenames:
        yield
        return
    from tests._support_engine import kept_engine_state

    with kept_engine_state(request.getfixturevalue("demo_engine")):
        yield
