"""Every placement `python -m bench multigpu` exercises (bench/multigpu.py PLANS), re-planned on
CPU from the 27B-shaped configs, and each split pushed through transformers' and accelerate's
real device-map code with the bitsandbytes nf4 quantizer on a meta model (simulated device maps)."""
from collections import Counter

import pytest
import torch
import transformers
from transformers.integrations.accelerate import _get_device_map
from transformers.quantizers.quantizer_bnb_4bit import Bnb4BitHfQuantizer

from bench import multigpu
from bench.shapes import gemma3_27b_config
from nla_tui.core.models.placement import GIB, device_map_for


def _simulated_device_map(role: str, kwargs: dict) -> dict:
    with torch.device("meta"):
        model = transformers.Gemma3ForCausalLM(gemma3_27b_config(multigpu.LAYERS[role])).to(torch.bfloat16)
    quantizer = Bnb4BitHfQuantizer(transformers.BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", llm_int8_skip_modules=["lm_head"]))
    quantizer.preprocess_model(model, device_map=kwargs["device_map"], keep_in_fp32_modules=[])
    return _get_device_map(model, kwargs["device_map"], kwargs["max_memory"], quantizer)


@pytest.mark.parametrize("name", sorted(multigpu.PLANS))
def test_plan_fits_its_cards_and_splits_load_onto_the_planned_cards(name):
    placement = multigpu.PLANS[name][1](gemma3_27b_config)
    used: Counter = Counter()
    for role, entry in placement.entries.items():
        if isinstance(entry, str):
            used[entry] += placement.needs[role]
            continue
        assert sum(entry.values()) >= placement.needs[role]
        used.update({f"cuda:{i}": b for i, b in entry.items()})
        dm = _simulated_device_map(role, device_map_for(placement, role))
        where = Counter(dm.values())
        assert set(where) == set(entry), (role, where)  # every planned card used, nothing on cpu/disk
    if name == "auto_2x24":
        assert all(b <= multigpu.CARD_GIB * GIB for b in used.values()), used
        # The three 27B models do not fit two 24 GiB cards one per card: the AR is split.
        assert placement["subject"] == "cuda:0" and placement["av"] == "cuda:1" and set(placement["ar"]) == {0, 1}
    else:
        assert set(placement["av"]) == {0, 1}


def test_simulated_free_matches_what_capped_cards_report(monkeypatch):
    """capped_free: a card capped by set_per_process_memory_fraction reports the cap, not the
    driver's free memory (what makes the 2 x 24 GiB emulation plan like real 24 GiB cards)."""
    from nla_tui.core.models import placement as pl

    total = 141 * GIB
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (total - GIB, total))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda i: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda i: 0)
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda i: multigpu.CARD_GIB * GIB / total)
    free = pl.gpu_free_memory()
    assert free == pytest.approx(multigpu.simulated_free(2, multigpu.CARD_GIB), abs=2)
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda i: 1.0)
    assert pl.gpu_free_memory() == {"cuda:0": total - GIB, "cuda:1": total - GIB}
