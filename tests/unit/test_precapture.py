"""Capturing the AV's decode graph while the AR loads (core/models/precapture.py): nothing to do
off CUDA, and a failed head start never fails the start nor leaves an eager runner behind."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from nla_tui.core.models import fast_decode, precapture


@pytest.fixture
def tiny():
    cfg = Gemma3TextConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(cfg).eval()
    yield model
    fast_decode.clear(model)


def test_nothing_starts_off_cuda_or_when_switched_off(tiny, monkeypatch):
    assert precapture.start(tiny, 64) is None
    monkeypatch.setenv("NLA_TUI_PRECAPTURE", "0")
    assert not precapture.enabled()


def test_the_thread_makes_the_runner_the_first_explanation_uses(tiny):
    job = precapture.BackgroundCapture(tiny, 40).start().join()
    assert job.error is None and job.seconds is not None
    runner = fast_decode.captured_runner(tiny, 1, 40)
    assert runner is not None and runner.max_len == 64  # lengths round up to 64, as decode does
    assert fast_decode.captured_runner(tiny, 1, 100) is None


def test_a_failed_capture_is_reported_and_dropped_not_kept_as_an_eager_runner(tiny, monkeypatch, caplog):
    real = fast_decode._Runner.__init__

    def capture_failed(self, *a, **k):  # what _capture leaves when CUDA refuses the graph
        real(self, *a, **k)
        self.graph, self.graph_error = None, "RuntimeError: capture failed (injected)"
    monkeypatch.setattr(fast_decode._Runner, "__init__", capture_failed)
    with caplog.at_level(logging.WARNING, logger="nla_tui.core.models.precapture"):
        job = precapture.BackgroundCapture(tiny, 40).start().join()
    assert "injected" in job.error and "first explanation captures it instead" in caplog.text
    assert fast_decode.captured_runner(tiny, 1, 40) is None  # dropped: the next use captures again


def test_an_exception_in_the_thread_does_not_escape(tiny, monkeypatch):
    def boom(*a, **k):
        raise MemoryError("no room for the cache")
    monkeypatch.setattr(fast_decode, "warmup", boom)
    job = precapture.BackgroundCapture(tiny, 40).start().join()
    assert job.error == "MemoryError: no room for the cache"
