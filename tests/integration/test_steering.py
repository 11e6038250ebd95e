"""Steering (issue 13) on the real Gemma 3 270M and the demo pair on main: the hook adds
exactly v at exactly the positions, alpha 0 changes nothing, an edited explanation
steers toward its concept more than a random vector of the same norm, compare and
explain-vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nla_tui.core.models import steering
from nla_tui.core.runtime import steer as steer_ops
from nla_tui.core.errors import InputError
from nla_tui.core.types import Message, Sampling
from tests._support_engine import engine_sharing_models

QUICK = Sampling(max_new_tokens=24)  # AV length: enough to exercise the path, cheap on 2 cores
FACT = [Message("user", "What is the capital of France?"), Message("assistant", "The capital of France is Paris.")]


@pytest.fixture(scope="module")
def engine(demo_engine):
    """Its own Engine over the shared demo models (the shared conversation is left alone)."""
    return engine_sharing_models(demo_engine, FACT)


def _index(engine, text: str, role: str = "model") -> int:
    return next(t.index for t in engine.tokens if t.text == text and t.role == role)


def test_hook_adds_exactly_v_at_exactly_the_positions(engine):
    subj = engine.subject
    ids = [t.token_id for t in engine.tokens]
    layer = subj.decoder.layers[subj.layer]
    hooks_before = len(layer._forward_hooks)
    base = subj.capture(ids).activations
    v = np.random.default_rng(0).standard_normal(base.shape[1]).astype(np.float32) * 40
    i = _index(engine, " France", "user")
    with steering.steer(subj, v, *steering.positions(i, "here")):
        here = subj.capture(ids).activations
    want = base.copy()
    want[i] += v
    np.testing.assert_array_equal(here, want)  # v at i, bit for bit; every other row untouched
    with steering.steer(subj, v, *steering.positions(i, "onward")):
        onward = subj.capture(ids).activations
    want = base.copy()
    want[i:] += v  # layer K's own output at later rows depends only on layers < K: unchanged
    np.testing.assert_array_equal(onward, want)
    assert len(layer._forward_hooks) == hooks_before  # removed after the call
    np.testing.assert_array_equal(subj.capture(ids).activations, base)


def test_hook_is_removed_when_the_forward_fails(engine):
    subj = engine.subject
    layer = subj.decoder.layers[subj.layer]
    n = len(layer._forward_hooks)
    with pytest.raises(RuntimeError):
        with steering.steer(subj, np.ones(engine.info.d_model, np.float32), 0, 1):
            raise RuntimeError("boom")
    assert len(layer._forward_hooks) == n
    with pytest.raises(InputError, match="width"):
        with steering.steer(subj, np.ones(3, np.float32), 0, 1):
            pass
    with pytest.raises(InputError, match="'sideways' is not one of here, onward"):
        steering.positions(3, "sideways")


def test_alpha_zero_reproduces_the_original_continuation(demo_engine):
    """A greedy chat reply, then a steer from inside it at alpha 0: the steered
    continuation is the unsteered one token for token, and both are the reply itself."""
    eng = engine_sharing_models(demo_engine)
    eng.chat("Name three colours.", max_new_tokens=10)
    reply = [t for t in eng.tokens if t.role == "model"]
    start = reply[1].index
    rest = [t.token_id for t in reply if t.index > start]
    b = steer_ops.steer(eng, start, "A list of fruits: apple, banana.", alpha=0.0, span="onward",
                       max_new_tokens=len(rest), original="A list of colours: red, green, blue.")
    assert b.steered_ids == b.original_ids
    assert b.original_ids == rest
    assert b.vector_norm == 0.0 and [c.token_id for c in b.after] == [c.token_id for c in b.before]
    assert eng.steered == [b] and [m.content for m in eng.messages][0] == "Name three colours."


def _target_logprob(engine, index: int, words: list[str], vector=None) -> float:
    subj = engine.subject
    ids = [t.token_id for t in engine.tokens[:index + 1]]
    first = [subj.tok(w, add_special_tokens=False)["input_ids"][0] for w in words]
    if vector is None:
        logits = steering.last_logits(subj, ids)
    else:
        with steering.steer(subj, vector, index, index + 1):
            logits = steering.last_logits(subj, ids)
    return float(torch.log_softmax(logits, -1)[first].mean())


# Measured on the 2-core CPU VM with this test's own setup (log-prob change of the edit's
# words at ' is', random = best of 8 vectors of the same norm):
# - trained demo pair (demo v2, issue 9; the AV's original explanation names France and
#   Paris): alpha 0.1 +1.7 (random best +2.2), 0.25 +4.2 (random best -2.2, mean -9.3),
#   0.5 +3.1 (-15.7), 1.0 -4.1 (-46.8) nats. Random pushes of that size wreck the
#   distribution; the edit's direction raises the edit's words up to alpha ~0.5.
# - untrained demo pair (demo v1), alpha 1: +8.5 nats, random best -48.
STEER_ALPHA = 0.25
STEER_MIN_GAIN_NATS = 2.0
STEER_MARGIN_NATS = 3.0


def test_steering_toward_an_edit_beats_a_random_vector(engine):
    """Steer ' is' (before 'Paris') toward an explanation about Germany: the subject's
    log-probability of ' Berlin'/' Germany' rises, and by a margin more than under any of
    8 random vectors of the same norm."""
    i = _index(engine, " is")
    original = steer_ops.original_explanation(engine, i, QUICK)
    edited = "The capital of Germany is Berlin."
    words = [" Berlin", " Germany"]
    v = steer_ops.steering_vector(engine, i, original, edited, alpha=STEER_ALPHA)
    assert np.linalg.norm(v) == pytest.approx(STEER_ALPHA * np.linalg.norm(engine.activations[i]), rel=1e-5)
    base = _target_logprob(engine, i, words)
    steered = _target_logprob(engine, i, words, v) - base
    rng = np.random.default_rng(0)
    randoms = []
    for _ in range(8):
        r = rng.standard_normal(v.shape[0]).astype(np.float32)
        randoms.append(_target_logprob(engine, i, words, r / np.linalg.norm(r) * np.linalg.norm(v)) - base)
    print(f"steering gain {steered:+.3f} nats; random: mean {np.mean(randoms):+.3f}, max {max(randoms):+.3f}; "
          f"untrained AV/AR: {engine.info.untrained_av}")
    assert steered > STEER_MIN_GAIN_NATS  # the edit's words become more likely
    assert steered - max(randoms) > STEER_MARGIN_NATS  # and more than any random push of that size


def test_steer_checks_its_input_before_any_model_runs(engine):
    calls = dict(engine.counters)
    i = _index(engine, " is")
    with pytest.raises(InputError, match="out of range"):
        steer_ops.steer(engine, 10_000, "x")
    with pytest.raises(InputError, match="empty"):
        steer_ops.steer(engine, i, "   ")
    with pytest.raises(InputError, match="not one of"):
        steer_ops.steer(engine, i, "x", span="all")
    with pytest.raises(InputError, match="finite"):
        steer_ops.steer(engine, i, "x", alpha=float("nan"))
    with pytest.raises(InputError, match="same as the original"):
        steer_ops.steer(engine, i, "Paris.", original="Paris.")
    assert engine.counters == calls


def test_compare_token_with_itself_is_the_zero_vector(engine):
    calls = dict(engine.counters)
    i = _index(engine, " Paris")
    c = steer_ops.compare(engine, i, i, QUICK)
    assert c.vector.shape == (engine.info.d_model,) and not c.vector.any()
    assert c.a_minus_b is None and c.b_minus_a is None and c.cos == pytest.approx(1.0)
    assert "zero vector" in c.message and "two different tokens" in c.message
    assert engine.counters == calls  # nothing to explain: no model ran


def test_compare_explains_both_differences(engine):
    i, j = _index(engine, " Paris"), _index(engine, " France", "user")
    seen = []
    c = steer_ops.compare(engine, i, j, QUICK, progress=lambda done, total: seen.append((done, total)))
    # How far along, token by token as the AV writes both explanations, never backwards.
    assert len(seen) > 4 and {t for _, t in seen} == {2 * QUICK.max_new_tokens}
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and seen[-1][0] == seen[-1][1]
    a, b = engine.activations[i].astype(np.float64), engine.activations[j].astype(np.float64)
    assert c.cos == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b), rel=1e-6)
    np.testing.assert_allclose(c.vector, (a - b).astype(np.float32))
    assert c.a_minus_b.text and c.b_minus_a.text and not c.message
    # each explanation is scored against its own difference vector
    assert c.a_minus_b.score.cos == pytest.approx(engine.score(c.a_minus_b.text, a - b).cos, abs=1e-5)
    assert c.b_minus_a.score.cos == pytest.approx(engine.score(c.b_minus_a.text, b - a).cos, abs=1e-5)


def test_explain_vectors_on_a_saved_npy_matches_the_session(engine, tmp_path):
    from nla_tui.core.nla.vectors import explain_file

    i = _index(engine, " Paris")
    path = tmp_path / "paris.npy"
    np.save(path, engine.activations[i])
    from_file = explain_file(engine, path, sampling=QUICK)[0]
    in_session = engine.explain([i], QUICK)[0]
    assert from_file.text == in_session.text and from_file.raw == in_session.raw
    assert from_file.score.cos == pytest.approx(in_session.score.cos, abs=1e-6)
    assert from_file.score.fve_nrm == in_session.score.fve_nrm or (
        from_file.score.fve_nrm == pytest.approx(in_session.score.fve_nrm, abs=1e-6))
