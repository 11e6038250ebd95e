"""The NLA contract on the real Gemma 3 270M: capture, injection, AV, AR scoring."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nla_tui.core.nla.ar import score_vectors
from nla_tui.core.errors import CheckpointError, InputError
from nla_tui.core.nla.sidecar import find_injection_slot
from nla_tui.core.types import Message, Sampling
from tests._support_engine import engine_sharing_models

CONVERSATION = [Message("user", "What is the capital of France?"),
                Message("assistant", "The capital of France is Paris.")]


@pytest.fixture(autouse=True)
def known_conversation(demo_engine):
    """Other test modules share demo_engine; give these tests a fixed, teacher-forced
    conversation (chat generation itself is tested in test_core_cli_worker.py)."""
    if demo_engine.messages != CONVERSATION:
        demo_engine.set_conversation(list(CONVERSATION))
    yield


def test_capture_equals_hidden_states_k_plus_1(demo_engine):
    subj = demo_engine.subject
    ids = [t.token_id for t in demo_engine.tokens]
    with torch.inference_mode():
        hs = subj.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    want = hs[subj.layer + 1][0].float().numpy()
    # CPU capture runs a row-exact attention (chunked capture is bit-for-bit one pass);
    # HF's stock attention sums in another order: ~1e-6 relative, a few 1e-4 at worst.
    np.testing.assert_allclose(demo_engine.activations, want, rtol=2e-3, atol=1e-2)
    # and not the neighbouring layers (an off-by-one would still be "close" to nothing)
    assert not np.allclose(demo_engine.activations, hs[subj.layer][0].float().numpy(), atol=1.0)
    norms = np.linalg.norm(want, axis=-1)
    np.testing.assert_allclose([t.norm for t in demo_engine.tokens], norms, rtol=1e-4)


def test_tokens_tagged_with_roles_and_top5(demo_engine):
    toks = demo_engine.tokens
    assert toks[0].role == "bos" and toks[0].text == "<bos>"
    roles = {t.role for t in toks}
    assert {"user", "model", "special"} <= roles
    user_text = "".join(t.text for t in toks if t.role == "user")
    assert user_text.strip() == "What is the capital of France?"
    assert all(t.role == "special" for t in toks if t.text in ("<start_of_turn>", "<end_of_turn>"))
    # top-5 candidates are a real distribution from the same forward pass
    for t in toks:
        assert len(t.top) == 5
        probs = [c.prob for c in t.top]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    france = next(t for t in toks if t.text == " France" and t.role == "user")
    assert "?" in [c.text for c in france.top]


def test_injected_row_and_no_double_sqrt_d(demo_engine):
    av = demo_engine.av
    v = demo_engine.activations[[5, 9]]
    embeds = av.build_embeds(v)
    ids, slot = av.prompt_ids(None)
    assert embeds.shape == (2, len(ids), av.meta.d_model)
    for r in range(2):
        want = v[r] * av.meta.injection_scale / np.linalg.norm(v[r])
        np.testing.assert_allclose(embeds[r, slot].numpy(), want, rtol=1e-5)
        assert math.isclose(float(embeds[r, slot].norm()), av.meta.injection_scale, rel_tol=1e-5)
    own = av.model.get_input_embeddings()(torch.tensor([ids]))[0]
    others = [i for i in range(len(ids)) if i != slot]
    torch.testing.assert_close(embeds[0, others], own[others])
    # √d applied exactly once: the raw table row times √d_model (Gemma's normalizer)
    raw = av.model.get_input_embeddings().weight[ids[1]].float()
    assert torch.allclose(embeds[0, 1].float(), raw * math.sqrt(av.meta.d_model), rtol=1e-3)
    assert not torch.allclose(embeds[0, 1].float(), raw, rtol=1e-2)


def test_one_injection_slot_with_sidecar_neighbours(demo_engine):
    av = demo_engine.av
    ids, slot = av.prompt_ids(None)
    assert ids.count(av.meta.injection_token_id) == 1
    assert ids[slot - 1] == av.meta.left_neighbor_id == 236813  # ">"
    assert ids[slot + 1] == av.meta.right_neighbor_id == 954  # "</"
    assert ids[0] == av.tok.bos_token_id and ids[1] != av.tok.bos_token_id  # one <bos>
    # custom prompt with <INJECT>: exactly one slot, wherever the user put it
    ids2, slot2 = av.prompt_ids("Describe <INJECT> briefly.")
    assert ids2[slot2] == av.meta.injection_token_id
    with pytest.raises(CheckpointError, match="exactly once"):
        av.prompt_ids("no placeholder here")
    with pytest.raises(CheckpointError, match="exactly 1"):
        find_injection_slot(av.meta, ids + ids)  # two good slots: never guess
    drifted = list(ids)
    drifted[slot - 1] = 107  # "\n" where ">" should be
    with pytest.raises(CheckpointError, match="template drift"):
        find_injection_slot(av.meta, drifted)


def test_av_explains_and_ar_scores_consistently(demo_engine):
    exps = demo_engine.explain([4, 9], Sampling(max_new_tokens=12))
    assert [e.index for e in exps] == [4, 9]
    for e in exps:
        assert e.raw and e.score is not None and not e.untrained_av  # the shipped pair is trained
        assert math.isclose(e.score.mse_nrm, 2 * (1 - e.score.cos), rel_tol=1e-6, abs_tol=1e-9)
        assert 0.0 <= e.score.mse_nrm <= 4.0
        assert e.truncated == ("</explanation>" not in e.raw)
    # batched and one-at-a-time greedy generation agree
    solo = demo_engine.explain([9], Sampling(max_new_tokens=12))[0]
    assert solo.raw == exps[1].raw
    assert demo_engine.explanations[9][0] is solo


def test_ar_metrics_match_an_independent_computation(demo_engine, demo_paths):
    """Reload the AR checkpoint with plain transformers, read block K's residual at the
    last token of the <bos>-prefixed prompt, apply the value head by hand."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = "The capital of France."
    vec = demo_engine.activations[9]
    got = demo_engine.score(text, vec)
    path = demo_paths["ar"]
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    prompt = demo_engine.ar.meta.ar_template.format(explanation=text)
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    assert ids[0, 0].item() == tok.bos_token_id
    store = {}
    h = model.model.layers[-1].register_forward_hook(lambda m, i, o: store.setdefault("h", o[0] if isinstance(o, tuple) else o))
    with torch.inference_mode():
        model(input_ids=ids)
    h.remove()
    w = load_file(str(path / "value_head.safetensors"))["weight"].float()
    pred = (store["h"][0, -1].float() @ w.T).numpy().astype(np.float64)
    gold = vec.astype(np.float64)
    cos = pred @ gold / (np.linalg.norm(pred) * np.linalg.norm(gold))
    d = len(gold)
    pn, gn = pred / np.linalg.norm(pred) * math.sqrt(d), gold / np.linalg.norm(gold) * math.sqrt(d)
    mse = np.mean((pn - gn) ** 2)
    var = demo_engine.ar.variance
    assert math.isclose(got.cos, cos, rel_tol=1e-4)
    assert math.isclose(got.mse_nrm, mse, rel_tol=1e-3, abs_tol=1e-5)
    assert math.isclose(got.fve_nrm, 1 - mse / var, rel_tol=1e-3, abs_tol=1e-4)


def test_score_vectors_edge_cases():
    v = np.arange(1, 9, dtype=np.float32)
    s = score_vectors(v, v * 3, math.sqrt(8), 0.5)
    assert math.isclose(s.cos, 1.0, rel_tol=1e-9) and s.mse_nrm < 1e-12 and math.isclose(s.fve_nrm, 1.0)
    s = score_vectors(v, -v, math.sqrt(8), None)
    assert math.isclose(s.mse_nrm, 4.0, rel_tol=1e-9) and s.fve_nrm is None
    e1, e2 = np.eye(8)[0], np.eye(8)[1]
    assert math.isclose(score_vectors(e1, e2, math.sqrt(8), 0.0579).mse_nrm, 2.0)  # orthogonal = 2


def test_bad_vectors_rejected(demo_engine):
    d = demo_engine.av.meta.d_model
    with pytest.raises(InputError, match="NaN or Inf"):
        demo_engine.explain_vectors(np.full((1, d), np.nan, np.float32))
    with pytest.raises(InputError, match="width d_model=640"):
        demo_engine.explain_vectors(np.ones((1, d + 1), np.float32))
    with pytest.raises(InputError, match="all zeros"):
        demo_engine.explain_vectors(np.zeros((1, d), np.float32))
    with pytest.raises(InputError, match="out of range"):
        demo_engine.explain([10_000])
    with pytest.raises(InputError, match="empty"):
        demo_engine.chat("   ")


def test_teacher_forced_conversation(demo_engine):
    eng = engine_sharing_models(demo_engine)
    msgs = [Message("system", "Be terse."), Message("user", "Name a colour."), Message("assistant", "Blue."),
            Message("user", "Another?"), Message("assistant", "Red.")]
    eng.set_conversation(msgs)
    roles = [t.role for t in eng.tokens]
    assert "system" in roles and roles.count("model") >= 2
    assert "".join(t.text for t in eng.tokens if t.role == "model").replace(" ", "") == "Blue.Red."
    assert "".join(t.text for t in eng.tokens if t.turn == 4 and t.role == "model") == "Red."
    assert eng.activations.shape == (len(eng.tokens), 640)
    # Two user messages in a row (an agent transcript has them) join one user turn, each
    # token keeping the index of the message it came from (core/models/conversation.py).
    eng.set_conversation([Message("user", "apple"), Message("user", "banana")])
    user = [(t.text.strip(), t.turn) for t in eng.tokens if t.role == "user" and t.text.strip()]
    assert ("apple", 0) in user and ("banana", 1) in user
    assert sum(t.text == "<start_of_turn>" for t in eng.tokens) == 1


def test_chat_decoding_equals_hf_generate(demo_engine):
    """Subject chat goes through fast_decode; greedy tokens equal HF generate's."""
    subj = demo_engine.subject
    msgs = [Message("user", "Name three colours.")]
    ids, _, _ = subj.tokenize(msgs, add_generation_prompt=True)
    with torch.inference_mode():
        out = subj.model.generate(input_ids=torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                                  eos_token_id=subj.stop_ids(), top_p=None, top_k=None, temperature=None)
    want = subj.tok.decode(out[0, len(ids):], skip_special_tokens=True).strip()
    deltas: list[str] = []
    got = subj.generate(msgs, 12, deltas.append)
    assert got == want and "".join(deltas).strip() == got
