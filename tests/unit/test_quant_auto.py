"""`--quant auto`: the highest precision per model that fits the cards' free memory, subject
first, then AR, then AV. Free memory is faked the way the explain batch-size test fakes it
(tests/integration/test_engine_rules.py: torch.cuda's own figures), so no GPU is needed."""

from __future__ import annotations

import pytest
import torch
import transformers

from nla_tui.core.errors import InputError
from nla_tui.core.models.placement import ROLE_CONTEXT_TOKENS, model_size
from nla_tui.core.models.quant_choice import choose_quants
from nla_tui.core.options import EngineOptions

GIB = 1 << 30


def _gemma27b(layers: int = 62):
    return transformers.Gemma3TextConfig(hidden_size=5376, intermediate_size=21504, num_hidden_layers=layers,
                                         num_attention_heads=32, num_key_value_heads=16, head_dim=128,
                                         vocab_size=262_208)


CONFIGS = {"subject": _gemma27b(), "av": _gemma27b(), "ar": _gemma27b(42)}


def need(role: str, quant: str) -> int:
    return model_size(CONFIGS[role], quant, context_tokens=ROLE_CONTEXT_TOKENS[role]).need


def fake_cards(monkeypatch, *free_bytes: int) -> None:
    """CUDA with these cards, each reporting `free` bytes free (placement.capped_free reads them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(free_bytes))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=0: (free_bytes[i], 141 * GIB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device=None: 1.0, raising=False)


def test_everything_bf16_when_it_all_fits(monkeypatch):
    fake_cards(monkeypatch, 400 * GIB)
    assert choose_quants(CONFIGS, "cuda") == {"subject": "bf16", "av": "bf16", "ar": "bf16"}


def test_the_subject_is_raised_first(monkeypatch):
    room = need("subject", "bf16") + need("av", "nf4") + need("ar", "nf4") + GIB // 2
    fake_cards(monkeypatch, room)
    assert choose_quants(CONFIGS, "cuda") == {"subject": "bf16", "av": "nf4", "ar": "nf4"}


def test_then_the_ar_then_the_av(monkeypatch):
    fake_cards(monkeypatch, need("subject", "bf16") + need("ar", "int8") + need("av", "nf4") + GIB // 2)
    assert choose_quants(CONFIGS, "cuda") == {"subject": "bf16", "av": "nf4", "ar": "int8"}
    fake_cards(monkeypatch, need("subject", "bf16") + need("ar", "bf16") + need("av", "int8") + GIB // 2)
    assert choose_quants(CONFIGS, "cuda") == {"subject": "bf16", "av": "int8", "ar": "bf16"}


def test_a_tight_card_keeps_nf4(monkeypatch):
    # Room for the three in nf4 but not for any model in int8 (what a 48 GB card holds).
    room = need("subject", "nf4") + need("av", "nf4") + need("ar", "nf4") + GIB // 2
    assert need("subject", "int8") - need("subject", "nf4") > GIB // 2
    fake_cards(monkeypatch, room)
    assert choose_quants(CONFIGS, "cuda") == {"subject": "nf4", "av": "nf4", "ar": "nf4"}
    fake_cards(monkeypatch, 4 * GIB)  # not even nf4: nf4 stays, and loading says why (plan_placement's error)
    assert choose_quants(CONFIGS, "cuda") == {"subject": "nf4", "av": "nf4", "ar": "nf4"}


def test_two_cards_are_used_together(monkeypatch):
    # The bf16 subject fits no single card but fits split across two (placement splits it).
    half = need("subject", "bf16") // 2 + 4 * GIB
    fake_cards(monkeypatch, half + need("av", "nf4"), half + need("ar", "nf4"))
    picks = choose_quants(CONFIGS, "cuda")
    assert picks["subject"] == "bf16"


def test_subject_quant_overrides_the_subject_alone(monkeypatch):
    fake_cards(monkeypatch, 400 * GIB)
    assert choose_quants(CONFIGS, "cuda", fixed={"subject": "nf4"}) == {"subject": "nf4", "av": "bf16", "ar": "bf16"}
    # The room the fixed subject leaves goes to the AR first.
    fake_cards(monkeypatch, need("subject", "int8") + need("ar", "bf16") + need("av", "nf4") + GIB // 2)
    assert choose_quants(CONFIGS, "cuda", fixed={"subject": "int8"}) == {"subject": "int8", "av": "nf4", "ar": "bf16"}


def test_a_named_card_counts_alone(monkeypatch):
    fake_cards(monkeypatch, 4 * GIB, 400 * GIB)
    assert choose_quants(CONFIGS, "cuda:1")["subject"] == "bf16"
    assert choose_quants(CONFIGS, "cuda:0")["subject"] == "nf4"


def test_cpu_is_fp32_and_never_asks_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=0: pytest.fail("CPU must not ask CUDA"))
    assert choose_quants(CONFIGS, "cpu") == {"subject": "fp32", "av": "fp32", "ar": "fp32"}
    assert choose_quants(CONFIGS, "cpu", fixed={"subject": "bf16"})["subject"] == "bf16"


@pytest.mark.parametrize("opts, word", [(EngineOptions(quant="nf3"), "--quant 'nf3'"),
                                        (EngineOptions(subject_quant="auto"), "--subject-quant 'auto'"),
                                        (EngineOptions(subject_quant="fp16"), "--subject-quant 'fp16'")])
def test_unknown_precision_is_refused(opts, word):
    with pytest.raises(InputError, match=word):
        opts.check_quants()
