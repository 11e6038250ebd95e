"""The training code on CPU with the real Gemma 3 270M: capture, SFT and one GRPO step.

Starts from the demo pair (its own Engine: LoRA is added in place) and tiny data, so it
checks that the code runs and learns, not the recipe's figures (docs/DEMO_NLA.md).
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from tests._support_engine import reusing_demo_loads
from training import data, losses, pair, train

RECORDS = [
    {"genre": "chat: word meaning", "split": "train", "messages": [
        {"role": "user", "content": "What does \"lantern\" mean?"},
        {"role": "assistant", "content": "As a noun, \"lantern\" means light in a transparent protective case."}]},
    {"genre": "Python documentation", "split": "train",
     "text": "The for statement iterates over the items of any sequence, in the order that they appear."},
    {"genre": "quotations (wisdom)", "split": "train", "text": "A journey of a thousand miles begins with a single step."},
]


# Each AV step is a forward and backward over the 262k-word head (~5 s on 2 cores). Three
# steps on this one batch: the AV's loss 4.37 -> 4.12 -> 3.75, the AR's 0.088 -> 0.084
# -> 0.077 (CPU fp32, deterministic); six went on to 2.25 and 0.051.
SFT_STEPS = 3


@pytest.fixture(scope="module")
def engine(demo_paths, demo_tokenizer, demo_engine):
    """Its own AV and AR, loaded from disk (LoRA goes into them in place); the subject
    (only read here) and the tokenizers are the ones the session already loaded."""
    from nla_tui.core.runtime.engine import Engine

    eng = Engine.from_options(preset="demo", device="cpu", quant="fp32", cache=False)
    with reusing_demo_loads(demo_tokenizer, demo_paths, demo_engine, models=("subject",)):
        eng.load()
    assert eng.av.model is not demo_engine.av.model and eng.ar.model is not demo_engine.ar.model
    return eng


@pytest.fixture(scope="module")
def examples(engine):
    return data.build_examples(engine.subject, RECORDS, seed=1, progress=lambda m: None)


def test_batched_capture_equals_subject_capture(engine):
    tok = engine.subject.tok
    seqs = [[tok.bos_token_id] + tok.encode(r["text"], add_special_tokens=False) for r in RECORDS[1:]]
    positions = [[1, len(seqs[0]) - 1], [3, 5]]
    acts, tops = data.capture_positions(engine.subject, seqs, positions)
    j = 0
    for s, ps in zip(seqs, positions):
        one = engine.subject.capture(s)  # one sequence, no padding: the product's capture
        for p in ps:
            np.testing.assert_allclose(acts[j].cpu().numpy(), one.activations[p], rtol=1e-4, atol=1e-2)
            assert tops[j][0] == int(one.top_ids[p][0])
            j += 1


def test_targets_are_short_tagged_and_free_of_control_tokens(engine, examples):
    assert len(examples) >= 4
    for e in examples:
        ids = losses.target_ids(engine.av, e.target)
        assert len(ids) <= data.MAX_TARGET_TOKENS + 1
        # Turn markers inside an explanation would end the AV's turn early.
        inner = ids[:-1]
        assert not set(inner) & set(engine.av.stop_ids()), e.target
        assert engine.av.tok.decode(ids[:-1]).startswith("<explanation>Token \"")


def test_sft_and_one_rl_step_lower_their_losses(engine, examples):
    vz, rc = engine.av, engine.ar
    pair.add_lora(vz.model, 4, 8)
    pair.add_lora(rc.model, 4, 8)
    pair.structure_changed(vz.model)
    pair.freeze_all_but_lora(vz.model)
    pair.freeze_all_but_lora(rc.model)
    rc.value_head.requires_grad_(True)
    batch = examples[:4]
    vecs = torch.stack([e.vector for e in batch])
    texts = [e.target + " Extra words to learn." for e in batch]  # not what the shipped AV writes

    def av_loss(_chunk):
        return losses.av_sft_loss(vz, vecs, texts)

    vz.model.train()
    stats = train.sft("av_sft", av_loss, [{"params": pair.lora_params(vz.model), "lr": 3e-3}],
                      batch, 4, budget_s=600, max_steps=SFT_STEPS, rng=random.Random(0))
    assert stats["steps"] == SFT_STEPS and stats["loss_final"] < stats["loss_step0"]
    stats = train.sft("ar_sft", lambda c: losses.ar_loss(rc, texts, vecs),
                      [{"params": pair.lora_params(rc.model) + list(rc.value_head.parameters()), "lr": 3e-3}],
                      batch, 4, budget_s=600, max_steps=SFT_STEPS, rng=random.Random(0))
    assert stats["loss_final"] < stats["loss_step0"]

    pair.policy_changed(vz.model)
    ref = train.reference_policy(vz)
    rl_vecs = vecs[:2].repeat_interleave(2, 0)
    seqs, parsed, adv, reward, closed = train.rollout(vz, rc, rl_vecs, 2, 3.0, seed=0)
    assert len(seqs) == 4 and torch.isfinite(reward).all()
    if float(adv.abs().sum()) == 0:  # identical samples carry no signal; give the step one
        adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    params = pair.lora_params(vz.model)
    opt = torch.optim.SGD(params, lr=1e-2)
    vz.model.train()
    before, _ = losses.rl_loss(vz, ref, rl_vecs, seqs, adv, 0.01)
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after, _ = losses.rl_loss(vz, ref, rl_vecs, seqs, adv, 0.01)
    assert float(after) < float(before)
