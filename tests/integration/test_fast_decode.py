"""fast_decode must produce exactly what HF `generate` (eager, dynamic cache) does.

Real model: the demo AV (Gemma 3 270M) with its real AV prompt and injected
vectors, on CPU in fp32. The CPU path is the same static-cache code the GPU
captures into CUDA graphs; the GPU check is in bench/ (no GPU in CI).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nla_tui.core.models import fast_decode as fd

N_NEW = 8  # enough to leave the prompt's echo; CPU decode is ~0.3 s/step


@pytest.fixture(scope="module")
def av(demo_paths, demo_tokenizer):
    """The demo AV's weights loaded here with plain transformers (not the engine's copy);
    its tokenizer files are the ones the session's demo tokenizer was loaded from."""
    from transformers import AutoModelForCausalLM

    from nla_tui.core.nla.av import Verbalizer
    from nla_tui.core.nla.sidecar import read_sidecar

    path = demo_paths["av"]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return Verbalizer(model, demo_tokenizer, read_sidecar(path))


@pytest.fixture(scope="module")
def embeds(av):
    rng = np.random.default_rng(7)
    vecs = rng.standard_normal((3, av.meta.d_model)).astype(np.float32)
    return av.build_embeds(vecs)


def hf_greedy(model, emb: torch.Tensor, n: int, stops: list[int]) -> list[int]:
    out = model.generate(inputs_embeds=emb, attention_mask=torch.ones(emb.shape[:2], dtype=torch.long),
                         max_new_tokens=n, do_sample=False, eos_token_id=stops, pad_token_id=0,
                         temperature=None, top_p=None, top_k=None)
    row = []
    for t in out[0].tolist():  # with inputs_embeds generate returns only new tokens
        row.append(t)
        if t in stops:
            break
    return row


@pytest.fixture(scope="module")
def reference(av, embeds):
    stops = av.stop_ids()
    return [hf_greedy(av.model, embeds[i:i + 1], N_NEW, stops) for i in range(embeds.shape[0])]


def test_batched_greedy_equals_hf_generate(av, embeds, reference):
    fd.clear()
    got = fd.decode(av.model, embeds, None, N_NEW, stop_token_ids=av.stop_ids())
    assert got == reference
    # Three rows, one template: the prefix before the injection slot was shared.
    _, slot = av.prompt_ids(None)
    assert fd.last_stats["prefix_len"] == slot
    # one batch, rounded up to a bucket by repeating a row: still exactly 3 results
    assert len(got) == 3 and fd.last_stats["batches"] == [fd.bucket_for(3)] and fd.bucket_for(3) > 3
    assert len(set(map(tuple, reference))) > 1  # the injected vector matters


def test_batch1_with_cached_prefix_equals_hf(av, embeds, reference):
    _, slot = av.prompt_ids(None)
    fd.clear()
    first = fd.decode(av.model, embeds[1:2], None, N_NEW, stop_token_ids=av.stop_ids(), prefix_len=slot)
    assert not fd.last_stats["prefix_hit"]
    again = fd.decode(av.model, embeds[2:3], None, N_NEW, stop_token_ids=av.stop_ids(), prefix_len=slot)
    assert fd.last_stats["prefix_hit"]
    assert first == [reference[1]] and again == [reference[2]]


def test_left_padded_rows_of_different_lengths(av, embeds, reference):
    # Row 1 is a shorter prompt (the canonical one minus its first 3 tokens),
    # left-padded to row 0's width: it must decode as if it were alone.
    short = embeds[1:2, 3:]
    ref_short = hf_greedy(av.model, short, N_NEW, av.stop_ids())
    padded = torch.cat([torch.zeros_like(embeds[1:2, :3]), short], dim=1)
    batch = torch.cat([embeds[0:1], padded])
    mask = torch.ones(batch.shape[:2], dtype=torch.long)
    mask[1, :3] = 0
    got = fd.decode(av.model, batch, mask, N_NEW, stop_token_ids=av.stop_ids())
    assert got == [reference[0], ref_short]


def test_prompt_longer_than_sliding_window(av):
    # 270M's sliding layers see 512 tokens: positions past that exercise the window mask.
    window = av.model.config.sliding_window
    ids = av.tok("The quick brown fox jumps over the lazy dog. " * 60, return_tensors="pt").input_ids
    assert ids.shape[1] > window + 8
    emb = av.model.get_input_embeddings()(ids)
    with torch.inference_mode():
        ref = hf_greedy(av.model, emb, 4, [])
        got = fd.decode(av.model, emb, None, 4)
    assert got == [ref]


def test_stop_string_and_cancel(av, embeds, reference):
    # Stop a row as soon as it has produced 3 tokens (stand-in for "</explanation>").
    got = fd.decode(av.model, embeds[:2], None, N_NEW, stop_strings_fn=lambda ids: len(ids) >= 3)
    assert got == [reference[0][:3], reference[1][:3]]
    seen = []

    def on_step(new_ids):
        seen.append(new_ids.tolist())
        return len(seen) < 2  # cancel after the second step

    got = fd.decode(av.model, embeds[:2], None, N_NEW, on_step=on_step)
    assert got == [reference[0][:2], reference[1][:2]]
    assert seen == [[reference[0][0], reference[1][0]], [reference[0][1], reference[1][1]]]


def test_sampling_is_seeded(av, embeds):
    """Same seed, same text. At a high temperature (a near-uniform draw over the whole
    vocabulary) other seeds give other text and none is the greedy one, so a decoder that
    ignored temperature fails; top_p near 0 keeps only the likeliest token, so it must be
    greedy again, which a decoder that ignored top_p would not be."""
    def run(seed, n=6, rows=2, temperature=1.0, top_p=0.9):
        g = torch.Generator().manual_seed(seed)
        return fd.decode(av.model, embeds[:rows], None, n, temperature=temperature, top_p=top_p, generator=g)

    a, b = run(1), run(1)
    assert a == b
    assert all(0 <= t < av.model.config.vocab_size for row in a for t in row)
    greedy = fd.decode(av.model, embeds[:1], None, 3)
    hot = [run(seed, n=3, rows=1, temperature=5.0, top_p=1.0) for seed in (1, 2)]
    assert hot[0] != greedy and hot[1] != greedy and hot[0] != hot[1]
    assert run(1, n=3, rows=1, temperature=5.0, top_p=1e-6) == greedy


def test_sample_next_keeps_the_nucleus():
    from nla_tui.core.models.sampling import sample_next

    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1], [0.1, 0.3, 0.6]]))
    g = torch.Generator().manual_seed(0)
    assert sample_next(logits, 0.0, 1.0, g).tolist() == [0, 2]  # greedy
    for _ in range(20):  # top_p 0.5: only the 0.6 token is in the nucleus
        assert sample_next(logits, 1.0, 0.5, g).tolist() == [0, 2]
    drawn = {tuple(sample_next(logits, 1.0, 0.85, g).tolist()) for _ in range(200)}
    assert {t[0] for t in drawn} == {0, 1}  # top_p 0.85 keeps 0.6 + 0.3, never the 0.1 token
    assert {t[1] for t in drawn} == {1, 2}


def test_a_failed_graph_capture_is_logged_and_decoding_goes_on_eagerly(av, embeds, caplog):
    """On CPU there is no CUDA to capture into: forcing a capture exercises the fallback."""
    r = fd._Runner(av.model, 1, 128, use_graph=False)
    with caplog.at_level("WARNING", logger="nla_tui.core.models.fast_decode"):
        r._capture()
    assert r.graph is None and r.graph_error
    assert any("decoding eagerly" in rec.getMessage() and r.graph_error in rec.getMessage()
               for rec in caplog.records)


def test_a_dropped_model_is_freed_with_its_decode_state():
    # The per-model runner cache has weak keys; a runner holding its model strongly kept
    # every decoded model alive (a reload, or the multigpu bench, ran out of GPU memory).
    import gc
    import weakref

    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=8,
                           max_position_embeddings=128)
    model = Gemma3ForCausalLM(cfg).eval()
    with torch.inference_mode():
        emb = model.get_input_embeddings()(torch.tensor([[1, 2, 3, 4]]))
    rows = fd.decode(model, emb, None, 4, stop_token_ids=[])
    assert len(rows[0]) == 4
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None
