"""The decode-step fusion (core/models/fusion.py): compiled code for decode shapes only, prefill
shapes through the plain modules, and a clean refusal where it cannot run (no CUDA)."""

from __future__ import annotations

import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig
from transformers.models.gemma3 import modeling_gemma3

from nla_tui.core.models import fusion


def _recorder(name: str, calls: list):
    def fn(x, *args, **kwargs):
        calls.append((name, tuple(x.shape)))
        return x
    return fn


def test_decode_shapes_take_the_compiled_path_and_prefill_shapes_the_plain_one():
    calls: list = []
    forward = fusion.decode_only(_recorder("compiled", calls), _recorder("plain", calls))
    forward(torch.zeros(1, 1, 64))  # layer norm, batch 1, one new position
    forward(torch.zeros(160, 1, 64))  # a batch bucket's decode step
    forward(torch.zeros(160, 32, 1, 16))  # q-norm / rotary on [b, heads, 1, head_dim]
    forward(torch.zeros(1, 48, 64))  # a prompt's prefill
    forward(torch.zeros(4, 16, 28, 16), torch.zeros(1), unsqueeze_dim=1)  # per-head prefill, extra args pass through
    forward(torch.zeros(64))  # a bare vector: not a decode shape
    assert [c[0] for c in calls] == ["compiled", "compiled", "compiled", "plain", "plain", "plain"]


def test_fuse_refuses_off_cuda_and_leaves_the_model_and_the_rotary_function_alone():
    cfg = Gemma3TextConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    model = Gemma3ForCausalLM(cfg).eval()
    rope = modeling_gemma3.apply_rotary_pos_emb
    assert fusion.fuse(model) == "not on CUDA"
    assert not getattr(model, "_nla_fused", False)
    assert modeling_gemma3.apply_rotary_pos_emb is rope
    assert all("forward" not in m.__dict__ for m in model.modules() if type(m).__name__.endswith("RMSNorm"))
    ids = torch.tensor([[1, 2, 3]])
    with torch.inference_mode():
        assert torch.isfinite(model(input_ids=ids).logits).all()
