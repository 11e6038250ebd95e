"""Explain-all memory (core/parking.py, core/explain_all.py): the park/batch decision from
free memory, and the subject + AR always coming back, whether explain-all ends, is cancelled
or fails. The engine tests use the real demo models on CPU with parking forced."""

from __future__ import annotations

import threading

import pytest
import torch

from nla_tui.core.models.parking import GIB, HOST_RESERVE, parked, passes, plan_explain
from nla_tui.core.types import Sampling

# One 27B AV row: 62 layers x 2 (K, V) x 16 heads x 128 x bf16 over 48 + 200 tokens, + fp32 logits.
ROW_27B = 2 * 62 * 16 * 128 * 2 * 248 + 8 * 262208


def test_48gb_card_parks_and_runs_150_rows_in_one_pass():
    # Three 27B nf4 models (~41 GiB) on a 44 GiB budget leave ~3 GiB: ~12 rows, 13 passes.
    plan = plan_explain(150, ROW_27B, free=3 * GIB, parkable=26 * GIB, host_free=64 * GIB)
    assert plan.park and plan.batch == 150 and passes(150, plan.batch) == 1
    unparked = plan_explain(150, ROW_27B, free=3 * GIB, parkable=0, host_free=64 * GIB)
    assert not unparked.park and passes(150, unparked.batch) > 10


def test_no_parking_when_everything_already_fits():
    plan = plan_explain(150, ROW_27B, free=60 * GIB, parkable=26 * GIB, host_free=64 * GIB)
    assert not plan.park and plan.batch == 150


def test_no_parking_without_host_memory_or_when_it_saves_too_little():
    short = plan_explain(150, ROW_27B, free=3 * GIB, parkable=26 * GIB, host_free=26 * GIB + HOST_RESERVE - 1)
    assert not short.park and "host memory" in short.reason
    assert not plan_explain(150, ROW_27B, free=3 * GIB, parkable=26 * GIB, host_free=None).park
    # Parking 0.5 GiB adds a few rows: one pass saved is not worth two copies of the weights.
    small = plan_explain(20, ROW_27B, free=3 * GIB, parkable=GIB // 2, host_free=64 * GIB)
    assert not small.park and "save" in small.reason


def test_batch_never_exceeds_the_rows_or_the_cap_and_is_at_least_one():
    assert plan_explain(5, ROW_27B, free=80 * GIB, parkable=0, host_free=None).batch == 5
    assert plan_explain(500, ROW_27B, free=3 * GIB, parkable=60 * GIB, host_free=99 * GIB, cap=64).batch == 64
    assert plan_explain(500, ROW_27B, free=0, parkable=0, host_free=None).batch == 1


def test_parked_restores_storage_when_the_block_raises():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ptrs = {n: p.data_ptr() for n, p in model.named_parameters()}
    state: dict = {}
    with pytest.raises(RuntimeError, match="boom"):
        with parked({"m": model}, torch.device("cpu"), state=state) as sizes:
            assert state["parked"] == ["m"] and sizes["m"] == sum(p.numel() * 4 for p in model.parameters())
            assert all(p.data_ptr() != ptrs[n] for n, p in model.named_parameters())  # moved to the copies
            raise RuntimeError("boom")
    assert state["parked"] == []
    for n, p in model.named_parameters():
        assert p.device.type == "cpu" and torch.equal(p, before[n])


def _param_snapshot(model):
    return {n: (p.device, p.detach().flatten()[:64].clone()) for n, p in list(model.named_parameters())[:6]}


def _assert_back(model, snap):
    now = dict(model.named_parameters())
    for n, (dev, head) in snap.items():
        assert now[n].device == dev and torch.equal(now[n].detach().flatten()[:64], head)


@pytest.fixture
def parking_engine(demo_engine):
    demo_engine.park_policy = "always"  # put back by conftest's keep_demo_engine_state
    return demo_engine


SAMPLING = Sampling(max_new_tokens=6)


@pytest.mark.slow
def test_parked_explain_all_matches_unparked_and_parks_during_the_av(parking_engine, monkeypatch):
    eng = parking_engine
    idx = list(range(min(5, len(eng.tokens))))
    eng.park_policy = "never"
    plain = eng.explain(idx, SAMPLING)
    assert eng.last_explain_plan["park"] is False
    eng.park_policy = "always"
    subj_ptr = eng.subject.model.get_input_embeddings().weight.data_ptr()
    seen = {}
    real = eng.av.generate

    def spy(*a, **k):
        seen["parked"] = list(eng.park_state["parked"])
        seen["moved"] = eng.subject.model.get_input_embeddings().weight.data_ptr() != subj_ptr
        return real(*a, **k)
    monkeypatch.setattr(eng.av, "generate", spy)
    got = eng.explain(idx, SAMPLING)
    assert seen == {"parked": ["ar", "subject"], "moved": True}
    assert eng.last_explain_plan["park"] is True and eng.park_state["parked"] == []
    assert [(e.index, e.raw, e.score.cos) for e in got] == [(e.index, e.raw, e.score.cos) for e in plain]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["fails", "cancelled"])
def test_models_come_back_when_explain_all_fails_or_is_cancelled(parking_engine, monkeypatch, how):
    eng = parking_engine
    snaps = {"subject": _param_snapshot(eng.subject.model), "ar": _param_snapshot(eng.ar.model)}
    score_before = eng.score("Paris is the capital.", eng.activations[1])
    cancel = threading.Event()

    def stop(*a, **k):
        assert eng.park_state["parked"] == ["ar", "subject"]
        if how == "fails":
            raise RuntimeError("AV crashed")
        cancel.set()
        return ["partial"] * len(a[0])
    monkeypatch.setattr(eng.av, "generate", stop)
    if how == "fails":
        with pytest.raises(RuntimeError, match="AV crashed"):
            eng.explain([0, 1, 2], SAMPLING, cancel=cancel)
    else:
        assert eng.explain([0, 1, 2], SAMPLING, cancel=cancel) == []
    assert eng.park_state["parked"] == []
    _assert_back(eng.subject.model, snaps["subject"])
    _assert_back(eng.ar.model, snaps["ar"])
    monkeypatch.undo()
    assert eng.score("Paris is the capital.", eng.activations[1]) == score_before


def test_batch_is_one_the_decoder_pads_within_the_memory():
    from nla_tui.core.models.fast_decode import bucket_for
    from nla_tui.core.models.parking import rows_that_fit

    for fit_rows in range(1, 200, 7):
        for rows in (3, 50, 150, 400):
            b = rows_that_fit(fit_rows * 1000, 1000, 160, rows, share=1.0)
            assert 1 <= b <= rows and (bucket_for(b) <= max(1, min(fit_rows, 160)) or b == 1)


def _failing_allocator(monkeypatch, fail_on: set[int]):
    """Make the n-th destination allocation of an unpark (1-based, over the whole test) fail as
    CUDA does when the card is out of memory; returns the destinations it did hand out."""
    from nla_tui.core.models import parking as pk

    real, calls, made = pk._device_empty, [0], []

    def alloc(like, device):
        calls[0] += 1
        if calls[0] in fail_on:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.63 GiB (injected)")
        t = real(like, device)
        made.append(t)
        return t
    monkeypatch.setattr(pk, "_device_empty", alloc)
    return made


def test_a_failed_unpark_leaves_each_model_whole_and_a_retry_brings_it_back(monkeypatch):
    from nla_tui.core.models.parking import UnparkError, ensure_unparked

    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))
    b = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 2))
    before = {k: {n: p.detach().clone() for n, p in m.named_parameters()} for k, m in (("a", a), ("b", b))}
    x = torch.randn(3, 16)
    out_b = b(x).detach()
    # a has 4 parameters and comes back first; the 2nd allocation for b fails, twice (the retry too).
    made = _failing_allocator(monkeypatch, fail_on={6, 9})
    state: dict = {}
    with pytest.raises(UnparkError, match=r"could not bring the b .* back to cpu .*out of memory.*tries again"):
        with parked({"a": a, "b": b}, torch.device("cpu"), state=state):
            parked_ptrs = {n: p.data_ptr() for n, p in b.named_parameters()}
    assert state["parked"] == ["b"] and state["pending"] is not None
    handed_out = {t.data_ptr() for t in made}
    # a is back on its new storage; b is wholly on its host copies, none of its half-allocated
    # destinations in use, and it computes what it did.
    assert all(p.data_ptr() in handed_out for p in a.parameters())
    assert {n: p.data_ptr() for n, p in b.named_parameters()} == parked_ptrs
    assert torch.equal(b(x), out_b)
    for k, m in (("a", a), ("b", b)):
        assert all(torch.equal(p, before[k][n]) for n, p in m.named_parameters())
    monkeypatch.undo()
    ensure_unparked(state)  # what the engine runs before the next use
    assert state["parked"] == [] and state["pending"] is None
    assert all(p.data_ptr() not in parked_ptrs.values() for p in b.parameters())
    assert torch.equal(b(x), out_b)


@pytest.mark.slow
def test_engine_recovers_after_explain_all_cannot_bring_the_models_back(parking_engine, monkeypatch):
    from nla_tui.core.models.parking import UnparkError

    eng = parking_engine
    snaps = {"subject": _param_snapshot(eng.subject.model), "ar": _param_snapshot(eng.ar.model)}
    score_before = eng.score("Paris is the capital.", eng.activations[1])
    _failing_allocator(monkeypatch, fail_on=set(range(1, 10_000)))  # nothing fits the card any more
    with pytest.raises(UnparkError, match="stay whole in host memory"):
        eng.explain([0, 1], SAMPLING)
    assert eng.park_state["parked"] == ["ar", "subject"]
    with pytest.raises(UnparkError):  # still no room: the next use says so instead of crashing
        eng.score("Paris is the capital.", eng.activations[1])
    monkeypatch.undo()  # memory is free again
    assert eng.score("Paris is the capital.", eng.activations[1]) == score_before
    assert eng.park_state["parked"] == []
    _assert_back(eng.subject.model, snaps["subject"])
    _assert_back(eng.ar.model, snaps["ar"])


@pytest.mark.slow
def test_both_explain_paths_make_the_same_warnings(parking_engine, monkeypatch):
    # The parked and the unparked path build explanations through one function
    # (core/nla/explain.py), so a truncated or non-finite result is flagged on both;
    # before, the parked path dropped "not finite" and a NaN score read "not scored".
    from nla_tui.core.types import NOT_FINITE_WARNING, TRUNCATED_WARNING

    eng = parking_engine
    monkeypatch.setattr(eng.ar, "score", lambda texts, vectors: [None] * len(texts))  # a NaN reconstruction
    two = Sampling(max_new_tokens=2)  # too short to close the tag
    seen = {}
    for policy, idx in (("never", [1, 2]), ("always", [3, 4])):
        eng.park_policy = policy
        seen[policy] = eng.explain(idx, two)
        assert eng.last_explain_plan["park"] is (policy == "always")
    for exps in seen.values():
        assert len(exps) == 2
        for e in exps:
            assert e.truncated and e.score is None
            assert e.warnings.count(TRUNCATED_WARNING) == 1 and e.warnings.count(NOT_FINITE_WARNING) == 1


@pytest.mark.slow
@pytest.mark.parametrize("how", ["finishes", "fails"])
def test_the_avs_decode_state_is_released_before_the_models_come_back(parking_engine, monkeypatch, how):
    """The AV's largest batch holds its KV cache and graphs until fast_decode.clear; unparking
    the subject and AR needs that room, so the clear must come first (an H100 capped at 48 GiB
    could not unpark after a 2,000-position sweep wave while the order was the other way)."""
    from nla_tui.core.models import fast_decode, parking

    eng = parking_engine
    events = []
    real_clear, real_unpark = fast_decode.clear, parking.Parking.unpark

    def clear(model=None):
        events.append("clear av" if model is eng.av.model else "clear other")
        return real_clear(model)

    def unpark(self):
        events.append("unpark")
        return real_unpark(self)

    monkeypatch.setattr(fast_decode, "clear", clear)
    monkeypatch.setattr(parking.Parking, "unpark", unpark)
    if how == "fails":
        monkeypatch.setattr(eng.av, "generate", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("AV crashed")))
        with pytest.raises(RuntimeError, match="AV crashed"):
            eng.explain([0, 1, 2], SAMPLING)
    else:
        assert len(eng.explain([0, 1, 2], SAMPLING)) == 3
    assert "unpark" in events and "clear av" in events[:events.index("unpark")], events
    assert eng.park_state["parked"] == []
