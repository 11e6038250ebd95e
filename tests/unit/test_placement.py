"""Placement over simulated GPU memory maps; size estimates checked against real bitsandbytes
quantisation and real (tiny) transformers models on CPU."""
import subprocess
import sys

import pytest

from nla_tui.core.errors import InputError, NlaError
from nla_tui.core.models.placement import (GIB, ROLE_CONTEXT_TOKENS, ROLES, Placement, describe, device_map_for,
                                    estimate_model_bytes, estimate_weight_bytes, gpu_free_memory, model_size,
                                    parse_devices, plan_placement)

# Gemma 3 27B text shape (the subject/AV; the AR keeps 42 of its 62 layers).
G27 = dict(hidden_size=5376, intermediate_size=21504, num_hidden_layers=62, num_attention_heads=32,
           num_key_value_heads=16, head_dim=128, vocab_size=262208)
# A usable 24 GB card (RTX 3090/4090: 24 GiB total) after the CUDA context takes its share.
CARD24, CARD12, CARD48, CARD80 = int(23.5 * GIB), int(11.5 * GIB), int(47.5 * GIB), int(79 * GIB)


def needs_27b(quant="nf4"):
    return {r: model_size(G27, quant, 42 if r == "ar" else None, ROLE_CONTEXT_TOKENS[r]) for r in ROLES}


def gpus(*sizes):
    return {f"cuda:{i}": s for i, s in enumerate(sizes)}


def check_fits(p: Placement, free):
    """Every card holds no more than it had free, and each model is fully placed."""
    used = {d: 0 for d in free}
    for role, entry in p.entries.items():
        if isinstance(entry, dict):
            assert sum(entry.values()) >= p.needs[role]  # plus what a split strands
            for i, b in entry.items():
                used[f"cuda:{i}"] += b
        elif entry != "cpu":
            used[entry] += p.needs[role]
    for d in free:
        assert used[d] <= free[d], (d, used[d], free[d])


# --- estimates -------------------------------------------------------------------------------

def test_27b_nf4_matches_measured_weights():
    assert estimate_weight_bytes(G27, "nf4") / GIB == pytest.approx(14.95, rel=0.01)
    assert estimate_weight_bytes(G27, "nf4", layers=42) / GIB == pytest.approx(10.97, rel=0.01)
    assert estimate_weight_bytes(G27, "bf16") / GIB == pytest.approx(50, rel=0.02)  # BENCHMARKS.md, first measurements: bf16 ~50 GiB
    sizes = [estimate_weight_bytes(G27, q) for q in ("nf4", "int8", "bf16", "fp32")]
    assert sizes == sorted(sizes)


def test_headroom_grows_with_context_and_nested_text_config():
    weights = estimate_weight_bytes(G27, "nf4")
    short, long = estimate_model_bytes(G27, "nf4", context_tokens=512), estimate_model_bytes(G27, "nf4")
    assert weights < short < long
    assert long - short == 2 * 62 * 16 * 128 * (4096 - 512) * 2  # bf16 K and V per layer
    assert estimate_weight_bytes({"text_config": G27}, "nf4") == weights  # Gemma 3 multimodal config
    assert estimate_weight_bytes({**G27, "tie_word_embeddings": False}, "bf16") == \
        estimate_weight_bytes(G27, "bf16") + 262208 * 5376 * 2  # untied lm_head stays bf16
    with pytest.raises(InputError, match="nf4"):
        estimate_weight_bytes(G27, "fp8")


@pytest.mark.parametrize("batch,measured_gib", [(64, 20.6), (160, 28.9)])
def test_need_covers_measured_peak_decode_memory(batch, measured_gib):
    """BENCHMARKS.md (first measurements), nf4 27B shape on an H100: 110-token prompt + 64 new tokens, peak allocated GiB.
    (Its batch-1 peak, 17.6 GiB, includes a 2.6 GiB lm_head the benchmark allocates before
    tie_weights, so it is not used here.)"""
    need = model_size(G27, "nf4", context_tokens=110 + 64, batch=batch).need / GIB
    assert measured_gib <= need <= measured_gib + 1.0


def test_nf4_and_int8_bytes_per_param_match_bitsandbytes():
    import bitsandbytes.functional as F
    import torch

    w = torch.randn(512, 1024, dtype=torch.bfloat16)
    q, s = F.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
    real = q.numel() + s.absmax.numel() * s.absmax.element_size() + s.state2.absmax.numel() * 4
    one_layer = dict(G27, hidden_size=1024, intermediate_size=1024, num_attention_heads=8, num_key_value_heads=8,
                     head_dim=64, vocab_size=0, num_hidden_layers=1)
    linear_params = 1024 * (512 + 2 * 512) + 512 * 1024 + 3 * 1024 * 1024  # q,k,v,o + gate,up,down
    est_linear = estimate_weight_bytes(one_layer, "nf4") - estimate_weight_bytes(dict(one_layer, num_hidden_layers=0), "nf4")
    norms = 2 * (6 * 1024 + 2 * 64)
    assert (est_linear - norms) / linear_params == pytest.approx(real / w.numel(), rel=1e-6)


@pytest.mark.parametrize("arch", ["gemma3", "llama", "qwen2"])
def test_bf16_estimate_matches_real_tiny_models(arch):
    import torch
    import transformers

    shape = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=64, vocab_size=4096)
    cfg_cls, model_cls = {"gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM"),
                          "llama": ("LlamaConfig", "LlamaForCausalLM"),
                          "qwen2": ("Qwen2Config", "Qwen2ForCausalLM")}[arch]
    cfg = getattr(transformers, cfg_cls)(**shape)
    model = getattr(transformers, model_cls)(cfg).to(torch.bfloat16)
    real = sum(p.numel() * p.element_size() for p in model.parameters())  # tied weights counted once
    assert estimate_weight_bytes(cfg, "bf16") == pytest.approx(real, rel=0.02)


@pytest.mark.parametrize("pooling_head", [True, False])
def test_multimodal_gemma3_estimate_counts_the_vision_tower(pooling_head):
    """Gemma 3 AV/AR checkpoints keep the multimodal wrapper; its SigLIP tower stays unquantised."""
    import torch
    import transformers

    cfg = transformers.Gemma3Config()
    cfg.vision_config.vision_use_head = pooling_head
    cfg.text_config.num_hidden_layers, cfg.text_config.vocab_size = 2, 1000
    with torch.device("meta"):
        model = transformers.Gemma3ForConditionalGeneration(cfg).to(torch.bfloat16)
    real = sum(p.numel() * p.element_size() for p in model.parameters())
    assert estimate_weight_bytes(cfg, "bf16") == pytest.approx(real, rel=0.001)
    text_only = estimate_weight_bytes(cfg.text_config, "nf4")
    assert estimate_weight_bytes(cfg, "nf4") - text_only == pytest.approx(
        sum(p.numel() * 2 for n, p in model.named_parameters() if "vision" in n or "multi_modal" in n), rel=0.001)


def test_gpu_free_memory_reads_each_visible_device(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: ((i + 1) * GIB, 24 * GIB))
    # Memory this process's allocator holds unused counts as free; allocated memory does not.
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda i: 3 * GIB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda i: 2 * GIB)
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda i: 1.0)
    assert gpu_free_memory() == {"cuda:0": 2 * GIB, "cuda:1": 3 * GIB}


# --- --devices -------------------------------------------------------------------------------

def test_parse_devices_forms():
    assert parse_devices("subject=0,av=cuda:1,ar=cpu") == {"subject": "cuda:0", "av": "cuda:1", "ar": "cpu"}
    assert parse_devices(" Subject = 1 , ar=auto ") == {"subject": "cuda:1", "ar": "auto"}
    assert parse_devices("") == {} and parse_devices("auto") == {}


@pytest.mark.parametrize("spec,what", [("model=0", "Unknown model 'model'"), ("subject=-1", "Bad device"),
                                       ("subject=gpu1", "Bad device"), ("av=cuda:x", "Bad device"),
                                       ("subject", "Cannot read"), ("ar=", "Cannot read"),
                                       ("av=0,av=1", "given twice")])
def test_parse_devices_errors_name_the_form(spec, what):
    with pytest.raises(InputError) as e:
        parse_devices(spec)
    assert what in str(e.value) and "subject=0,av=1,ar=cpu" in str(e.value)


# --- placement -------------------------------------------------------------------------------

def test_two_24gb_cards_split_only_the_ar():
    free = gpus(CARD24, CARD24)
    p = plan_placement(needs_27b(), free, quant="nf4")
    assert p["subject"] == "cuda:0" and p["av"] == "cuda:1"
    assert set(p["ar"]) == {0, 1}  # 11.6 GiB fits on neither card's remainder
    assert any("ar is split across cuda:0+1" in w for w in p.warnings)
    check_fits(p, free)


def test_four_24gb_cards_one_model_per_card():
    free = gpus(CARD24, CARD24, CARD24, CARD24)
    p = plan_placement(needs_27b(), free)
    assert [p[r] for r in ROLES] == ["cuda:0", "cuda:1", "cuda:2"] and not p.warnings
    check_fits(p, free)


@pytest.mark.parametrize("card", [CARD48, CARD80])
def test_one_big_card_holds_all_three(card):
    p = plan_placement(needs_27b(), gpus(card))
    assert all(p[r] == "cuda:0" for r in ROLES)
    assert describe(p).startswith("subject cuda:0 ~17.5G · av cuda:0 ~16.0G · ar cuda:0 ~11.8G")


def test_two_12gb_cards_must_split():
    free = gpus(CARD12, CARD12)
    needs = {"subject": int(8.5 * GIB), "av": int(8.5 * GIB), "ar": int(5.5 * GIB)}  # 12B-class in nf4
    p = plan_placement(needs, free)
    assert p["subject"] == "cuda:0" and p["av"] == "cuda:1" and set(p["ar"]) == {0, 1}
    check_fits(p, free)
    one = plan_placement({"subject": int(15 * GIB)}, free)  # bigger than any card on its own
    assert sorted(one["subject"]) == [0, 1]


def test_too_small_says_needed_vs_free_and_what_to_do():
    with pytest.raises(NlaError) as e:
        plan_placement(needs_27b(), gpus(CARD24), quant="nf4")
    msg = str(e.value)
    assert "45.3 GiB" in msg and "23.5 GiB" in msg and "cuda:0 23.5 GiB" in msg and "--devices ar=cpu" in msg
    assert "--quant nf4" not in msg  # already nf4
    with pytest.raises(NlaError, match="--quant nf4"):
        plan_placement(needs_27b("bf16"), gpus(CARD80))


def test_cpu_only_puts_everything_on_cpu():
    p = plan_placement(needs_27b(), {})
    assert all(p[r] == "cpu" for r in ROLES)
    assert device_map_for(p, "subject") == {"device_map": {"": "cpu"}}
    assert gpu_free_memory() == {}  # this CI machine has no CUDA


def test_explicit_devices_honoured_and_rest_planned_around_them():
    free = gpus(CARD24, CARD24)
    p = plan_placement(needs_27b(), free, parse_devices("subject=1,ar=cpu"))
    assert p["subject"] == "cuda:1" and p["ar"] == "cpu" and p["av"] == "cuda:0"
    check_fits(p, free)
    p = plan_placement({"subject": GIB}, free, {"subject": "auto", "ar": "cuda:0"})
    assert p["subject"] == "cuda:0" and "ar" not in p.entries and "not being loaded" in p.warnings[0]


@pytest.mark.parametrize("explicit,free,what", [
    ({"subject": "cuda:2"}, gpus(CARD24, CARD24), "cuda:2, but that GPU is not visible (2 visible: cuda:0, cuda:1)"),
    ({"av": "cuda:0"}, {}, "not visible (0 visible: none)"),
    ({"av": "cuda:0"}, gpus(CARD12), "has 11.5 GiB left. Use av=auto"),
    ({"vision": "cuda:0"}, gpus(CARD24), "Unknown model 'vision'"),
])
def test_explicit_devices_validated(explicit, free, what):
    with pytest.raises(InputError) as e:
        plan_placement(needs_27b(), free, explicit)
    assert what in str(e.value)


# --- loader arguments and status line ----------------------------------------------------------

def _tiny_meta_model(tied):
    import torch
    import transformers

    cfg = transformers.Gemma3TextConfig(hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                                        num_attention_heads=8, num_key_value_heads=8, head_dim=64,
                                        vocab_size=8000, tie_word_embeddings=tied)
    with torch.device("meta"):
        return cfg, transformers.Gemma3ForCausalLM(cfg).to(torch.bfloat16)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("fractions", [(0.5, 0.7), (0.3, 0.95), (0.95, 0.3), (0.4, 0.4, 0.4)])
def test_split_kwargs_place_every_module_on_planned_cards(tied, fractions):
    """The split kwargs go through transformers' and accelerate's real device-map code on a meta
    model (sizes only, no GPU): nothing spills to cpu/disk and no card gets more than planned.
    Without the split reserves this spilled to 'disk' (accelerate keeps the largest module free
    on the first card and places decoder layers whole)."""
    from accelerate.utils import compute_module_sizes
    from transformers.integrations.accelerate import _get_device_map
    cfg, model = _tiny_meta_model(tied)
    size = model_size(cfg, "bf16", context_tokens=64)
    assert size.weights == pytest.approx(compute_module_sizes(model)[""], rel=0.02)
    free = gpus(*(int(f * size.need) for f in fractions))
    p = plan_placement({"ar": size}, free)
    assert isinstance(p["ar"], dict) and len(p["ar"]) >= 2
    kwargs = device_map_for(p, "ar")
    assert kwargs["device_map"] == "sequential"
    placed = _get_device_map(model, kwargs["device_map"], kwargs["max_memory"], None)
    assert set(placed.values()) <= set(p["ar"])
    sizes = compute_module_sizes(model)
    for card, share in p["ar"].items():
        assert sum(sizes[name] for name, dev in placed.items() if dev == card) <= share


def test_split_budgets_undo_bitsandbytes_factor_and_whole_cards_need_no_budget():
    import transformers

    from transformers.quantizers.quantizer_bnb_4bit import Bnb4BitHfQuantizer
    size = model_size(G27, "nf4", 42, 512)
    p = plan_placement({"ar": size}, gpus(7 * GIB, 7 * GIB))
    kwargs = device_map_for(p, "ar")
    quantizer = Bnb4BitHfQuantizer(transformers.BitsAndBytesConfig(load_in_4bit=True))
    after = quantizer.adjust_max_memory(kwargs["max_memory"])  # what accelerate then sees
    # accelerate counts 0.5 B per nf4 weight: its budget must cover the counted weights plus the
    # stranded layer per boundary, yet stay within what the plan took from each card.
    assert sum(after.values()) >= size.accounted + 2 * size.layer * 0.97
    assert all(after[i] <= p["ar"][i] for i in after)
    assert device_map_for(plan_placement({"av": GIB}, gpus(CARD24, CARD24)), "av", "nf4") == \
        {"device_map": {"": "cuda:0"}}


def test_split_that_cannot_take_its_stranded_layers_is_refused():
    size = model_size(G27, "nf4", 42, 512)
    free = gpus(size.need // 2 + GIB // 50, size.need // 2 + GIB // 50)  # fits the bytes, not the reserves
    with pytest.raises(NlaError, match="ar split over cards"):
        plan_placement({"ar": size}, free)


def test_describe_status_line():
    p = plan_placement({"subject": 15 * GIB, "av": 15 * GIB, "ar": 11 * GIB}, gpus(16 * GIB, 27 * GIB))
    used = {"subject": 15 * GIB, "av": 15 * GIB, "ar": 11 * GIB}
    assert describe(p, used) == "subject cuda:0 15.0G · av cuda:1 15.0G · ar cuda:1 11.0G"
    split = plan_placement({"ar": 11 * GIB}, gpus(6 * GIB, 6 * GIB))
    assert describe(split) == "ar cuda:0+1 ~11.0G"


def test_import_pulls_in_neither_torch_nor_textual():
    code = ("import sys, nla_tui.core.models.placement; "
            "print(sorted(m for m in ('torch', 'textual', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_corpus_sized_subject_reservation_lets_the_27b_trio_fit_44_gib():
    """Three 27B nf4 models on one 44 GiB card: refused with a chat's 4,096-token subject KV
    reservation (what an H100 capped at 44 GiB said, BENCHMARKS.md), placed when the subject
    holds at most a sweep's longest conversation; the AV's and AR's budgets are unchanged."""
    from nla_tui.core.models.placement import role_sizes

    configs = {"subject": G27, "av": G27, "ar": {**G27, "num_hidden_layers": 42}}
    quants = {r: "nf4" for r in ROLES}
    free = {"cuda:0": 44 * GIB}
    chat = role_sizes(configs, quants)
    corpus = role_sizes(configs, quants, {"subject": 96})
    with pytest.raises(NlaError, match="only 44.0 GiB is free"):
        plan_placement(chat, free, {}, "nf4")
    placed = plan_placement(corpus, free, {}, "nf4")
    assert set(placed.entries.values()) == {"cuda:0"}
    kv_per_token = 2 * 62 * 16 * 128 * 2  # k and v, bf16, every layer
    assert chat["subject"].need - corpus["subject"].need == kv_per_token * (4096 - 96)
    assert (chat["av"].need, chat["ar"].need) == (corpus["av"].need, corpus["ar"].need)
