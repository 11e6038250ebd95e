"""int4 weights (core/models/int4.py): the format's rounding, the portable kernel, and the choice
of kernel where the fast one cannot run (no GPU, no Triton/gemlite)."""

from __future__ import annotations

import sys

import pytest
import torch

from nla_tui.core.models import int4


@pytest.fixture(autouse=True)
def fresh_choice():
    int4._KERNEL.clear()
    yield
    int4._KERNEL.clear()


def test_quantised_weights_are_within_half_a_step_of_the_originals():
    w = torch.randn(48, 256, generator=torch.Generator().manual_seed(1)) * 0.05
    packed, scale, zero = int4.quantize(w)
    assert packed.dtype == torch.uint8 and packed.shape == (48, 128) and scale.shape == (48, 256 // int4.GROUP)
    back = int4.dequantize(packed, scale, zero, torch.float32)
    step = scale.float().repeat_interleave(int4.GROUP, dim=1)
    # round to nearest, plus the bf16 rounding of zero (|zero| <= 15: up to 2^-4 of a step)
    assert ((back - w).abs() <= step * 0.57).all()
    assert int4.unpack(packed).max() <= 15


def test_portable_kernel_computes_the_dequantised_linear_and_survives_parking_moves():
    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 64, bias=True)
    q = int4.Int4Linear.from_linear(lin)
    x = torch.randn(3, 5, 128)
    w = int4.dequantize(q.packed, q.scale, q.zero, torch.float32)
    assert torch.allclose(q(x), torch.nn.functional.linear(x, w, lin.bias), atol=1e-5)
    rel = (q(x) - lin(x)).norm() / lin(x).norm()
    assert rel < 0.15  # 4-bit rounding (~0.06-0.09), not a wrong layout (~1.4)
    assert {n for n, _ in q.named_parameters()} == {"packed", "scale", "zero", "bias"}


def test_without_a_gpu_the_model_keeps_the_portable_kernel():
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64))
    model.config = type("C", (), {})()
    x = torch.randn(2, 64)
    ref = model(x)
    assert int4.quantize_model(model) == 2 and model.config.nla_int4 == {"format": int4.FORMAT}
    assert int4.use_kernel(model) == "torch"
    assert int4.kernel() == ("torch", "no CUDA device")
    assert (model(x) - ref).norm() / ref.norm() < 0.15


def test_without_triton_or_gemlite_the_choice_falls_back_and_says_why(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "gemlite", None)  # import gemlite raises ImportError
    name, why = int4.kernel()
    assert name == "torch" and "gemlite/Triton unavailable" in why
    int4._KERNEL.clear()
    monkeypatch.setenv("NLA_TUI_INT4_KERNEL", "torch")
    assert int4.kernel() == ("torch", "NLA_TUI_INT4_KERNEL=torch")
