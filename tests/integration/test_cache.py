"""Activation and explanation caches: exact keys, corruption, LRU bound, two processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from nla_tui.core.store.cache import (ActivationCache, ExplanationCache, av_identity,
                                default_cache_root, parse_size, subject_identity)
from nla_tui.core.errors import InputError
from nla_tui.core.types import Explanation, Sampling, Score
from tests._support_session import make_info
from tests._support_paths import REPO

IDENT = subject_identity(make_info())


def acts_for(seed: int, n: int = 12, d: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def test_round_trip_is_bit_exact_and_keys_are_exact(tmp_path):
    c = ActivationCache(tmp_path)
    ids = list(range(100, 112))
    a = acts_for(1)
    top = np.arange(36, dtype=np.int64).reshape(12, 3)
    c.put(IDENT, ids, a, {"top_ids": top})
    hit = c.get(IDENT, np.array(ids))  # numpy ids key the same as a list
    assert hit is not None and hit.activations.tobytes() == a.tobytes()
    assert np.array_equal(hit.extras["top_ids"], top)
    assert c.get(IDENT, ids[:-1]) is None  # a prefix is a different conversation
    assert c.get(IDENT, ids[:-1] + [999]) is None
    assert c.get(dict(IDENT, layer=7), ids) is None
    assert c.get(dict(IDENT, quant="nf4"), ids) is None
    assert c.get(dict(IDENT, subject="other@rev"), ids) is None
    assert c.stats.hits == 1 and c.stats.misses == 5
    assert c.dir == tmp_path / "activations" / "v1"  # versioned layout


def test_identity_uses_revision_or_a_weights_fingerprint(tmp_path):
    info = make_info()
    assert subject_identity(info)["subject"] == "google/gemma-3-270m@abc123"
    local = tmp_path / "model"
    local.mkdir()
    (local / "model.safetensors").write_bytes(b"x" * 100)
    info.subject, info.revision = str(local), {}
    first = subject_identity(info)["subject"]
    assert first.startswith("local:")
    other = tmp_path / "model2"
    other.mkdir()
    (other / "model.safetensors").write_bytes(b"y" * 100)
    info.subject = str(other)
    assert subject_identity(info)["subject"] != first
    # The AR is part of an explanation's identity: a cached Explanation carries its score.
    assert av_identity(make_info()) != av_identity(make_info(d_model=16).__class__(
        **dict(make_info().to_json(), ar="another/ar")))


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty"])
def test_corrupt_entries_are_detected_removed_and_recomputed(tmp_path, damage):
    c = ActivationCache(tmp_path)
    ids, a = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], acts_for(2)
    c.put(IDENT, ids, a)
    path = c.path_for(c.key(IDENT, ids))
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-5] ^= 0x40  # inside the tensor bytes: safetensors itself would not notice
    elif damage == "truncate":
        data = data[: len(data) - 17]
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    assert c.get(IDENT, ids) is None
    assert not path.exists() and c.stats.corrupt == 1
    c.put(IDENT, ids, a)  # the caller recomputes and stores again
    assert c.get(IDENT, ids).activations.tobytes() == a.tobytes()


def test_lru_eviction_keeps_the_cache_under_its_bound(tmp_path):
    one = len(_entry_bytes(tmp_path))
    c = ActivationCache(tmp_path / "c", max_bytes=5 * one + one // 2)
    for i in range(5):
        c.put(IDENT, [i] * 12, acts_for(i))
        os.utime(c.path_for(c.key(IDENT, [i] * 12)), (1000 + i, 1000 + i))  # i = age order
    assert c.get(IDENT, [0] * 12) is not None  # the oldest becomes the most recent
    for i in range(5, 9):
        c.put(IDENT, [i] * 12, acts_for(i))
        assert c.total_bytes() <= c.max_bytes
    assert len(c) == 5
    assert c.get(IDENT, [0] * 12) is not None  # survived thanks to the hit
    assert all(c.get(IDENT, [i] * 12) is None for i in range(1, 5))  # least recently used
    assert all(c.get(IDENT, [i] * 12) is not None for i in range(5, 9))
    c.max_bytes = 2 * one
    c.evict()
    assert len(c) == 2 and c.total_bytes() <= 2 * one
    huge = ActivationCache(tmp_path / "h", max_bytes=one // 2)
    huge.put(IDENT, [0] * 12, acts_for(0))  # larger than the whole cache: not stored
    assert len(huge) == 0


def _entry_bytes(tmp_path: Path) -> bytes:
    c = ActivationCache(tmp_path / "probe")
    c.put(IDENT, [0] * 12, acts_for(0))
    return c.path_for(c.key(IDENT, [0] * 12)).read_bytes()


_WRITER = textwrap.dedent("""
    import sys, numpy as np
    sys.path.insert(0, {repo!r})
    from nla_tui.core.store.cache import ActivationCache
    ident = {{"subject": "s@r", "quant": "fp32", "layer": 3}}
    c = ActivationCache({root!r}, max_bytes={bound})
    def acts(k):
        return np.random.default_rng(k).standard_normal((20, 4096)).astype(np.float32)
    table = {{k: acts(k) for k in range(45)}}
    bad = 0
    for r in range(4):
        for k in range({start}, {start} + 30):  # the two writers overlap on half the keys
            c.put(ident, [k] * 20, table[k])
            for j in range(4):  # read what the other process is writing right now
                q = (k + 15 * j) % 45
                hit = c.get(ident, [q] * 20)
                if hit is not None and hit.activations.tobytes() != table[q].tobytes():
                    bad += 1
    print("bad", bad, "corrupt", c.stats.corrupt)
""")


def test_two_processes_writing_at_once_leave_it_consistent(tmp_path):
    entry = 20 * 4096 * 4
    bound = 12 * entry
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER.format(
        repo=str(REPO), root=str(tmp_path), bound=bound, start=start)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for start in (0, 15)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert out.split() == ["bad", "0", "corrupt", "0"], out + err
    c = ActivationCache(tmp_path, max_bytes=bound)
    assert 0 < len(c) and c.total_bytes() <= bound
    assert not list(c.dir.rglob("*.tmp"))
    ident = {"subject": "s@r", "quant": "fp32", "layer": 3}
    found = 0
    for k in range(45):
        hit = c.get(ident, [k] * 20)
        if hit is not None:
            found += 1
            want = np.random.default_rng(k).standard_normal((20, 4096)).astype(np.float32)
            assert hit.activations.tobytes() == want.tobytes()
    assert found == len(c) and c.stats.corrupt == 0


def _explanation(text: str = "blue sky") -> Explanation:
    return Explanation(index=3, text=text, raw=f"<explanation>{text}</explanation>",
                       sampling=Sampling(), score=Score(0.9, 0.2, 0.6))


def test_explanation_cache_keys(tmp_path):
    c = ExplanationCache(tmp_path)
    ident = av_identity(make_info())
    vec = acts_for(5)[0]
    c.put(ident, vec, None, Sampling(seed=1), _explanation())
    hit = c.get(ident, vec, None, Sampling(seed=99), index=7)  # greedy: the seed is irrelevant
    assert hit is not None and hit.text == "blue sky" and hit.index == 7
    assert hit.score == Score(0.9, 0.2, 0.6) and hit.sampling.seed == 99
    assert c.get(ident, vec, None, Sampling(max_new_tokens=50), 7) is None
    assert c.get(ident, vec, "Say <INJECT>", Sampling(), 7) is None
    vec2 = vec.copy()
    vec2[0] = np.nextafter(vec2[0], np.float32(np.inf))  # one ulp away is another vector
    assert c.get(ident, vec2, None, Sampling(), 7) is None
    assert c.get(dict(ident, ar="x"), vec, None, Sampling(), 7) is None
    hot = Sampling(temperature=0.8, seed=1)
    c.put(ident, vec, None, hot, _explanation("warm"))
    assert c.get(ident, vec, None, hot, 0).text == "warm"
    assert c.get(ident, vec, None, Sampling(temperature=0.8, seed=2), 0) is None
    # corruption: detected, dropped, reported as a miss
    path = c.path_for(c.key(ident, vec, None, hot))
    path.write_text(path.read_text().replace("warm", "cold"))
    assert c.get(ident, vec, None, hot, 0) is None and not path.exists()


def test_cache_root_and_sizes(tmp_path, monkeypatch):
    monkeypatch.setenv("NLA_TUI_CACHE", str(tmp_path / "here"))
    monkeypatch.delenv("NLA_TUI_CACHE_MAX_BYTES", raising=False)
    assert default_cache_root() == tmp_path / "here"
    assert ActivationCache().dir == tmp_path / "here" / "activations" / "v1"
    # the built-in bound is the one the docs promise (docs/SESSION_SCHEMA.md)
    doc = (REPO / "docs" / "SESSION_SCHEMA.md").read_text(encoding="utf-8")
    documented = re.search(r"activations ([\d.]+ ?[KMG]iB) by default", doc).group(1)
    assert ActivationCache().max_bytes == parse_size(documented.replace(" ", ""))
    monkeypatch.setenv("NLA_TUI_CACHE_MAX_BYTES", "512MiB")
    assert ActivationCache().max_bytes == 512 << 20
    assert parse_size("1.5g") == int(1.5 * (1 << 30)) and parse_size("1000") == 1000
    with pytest.raises(InputError, match="4GiB"):
        parse_size("lots")


@pytest.mark.slow
def test_reopening_and_reexplaining_runs_neither_the_subject_nor_the_av(tmp_path, demo_engine):
    """Real engine on the demo preset; model calls counted by engine.counters."""
    from nla_tui.core.runtime.engine_caches import EngineCaches
    from nla_tui.core.store.session import load_session, save_session, session_from_engine
    from nla_tui.core.types import Message

    engine = demo_engine
    engine.caches = EngineCaches(tmp_path / "cache", enabled=True)  # put back by keep_demo_engine_state
    msgs = [Message("user", "Why is the sky blue? Answer in one word.")]
    engine.set_conversation(msgs)
    tokens, acts = list(engine.tokens), engine.activations.copy()
    i, j = len(tokens) - 2, len(tokens) - 3
    greedy = Sampling(max_new_tokens=12)
    first = engine.explain([i], greedy)
    save_session(session_from_engine(engine, "cached", first), tmp_path / "s")
    calls = dict(engine.counters)

    # Reopen the saved conversation and re-explain the same token: all from disk.
    reopened = load_session(tmp_path / "s")
    engine.set_conversation(reopened.messages)
    again = engine.explain([i], Sampling(max_new_tokens=12, seed=7))  # greedy ignores seed
    assert engine.counters == calls
    assert engine.tokens == tokens and engine.activations.tobytes() == acts.tobytes()
    assert again[0].text == first[0].text and again[0].score == first[0].score
    assert again[0].index == i

    # A batch with one cached and one new token runs the AV for the new one only,
    # and streams it under its own index.
    streamed = set()
    both = engine.explain([i, j], greedy, on_delta=lambda k, _t: streamed.add(k))
    assert engine.counters["av_generate"] == calls["av_generate"] + 1
    assert [e.index for e in both] == [i, j] and both[0].text == first[0].text
    assert streamed <= {j}

    # Without the caches the same reopen runs the subject again (the wiring matters).
    engine.caches = EngineCaches(enabled=False)
    engine.set_conversation(reopened.messages)
    assert engine.counters["subject_forward"] == calls["subject_forward"] + 1


def test_engine_caches_can_be_switched_off(tmp_path, monkeypatch):
    from nla_tui.core.runtime.engine_caches import EngineCaches

    calls = []

    def compute(ids):
        calls.append(list(ids))
        a = acts_for(len(calls), n=len(ids))
        return type("Cap", (), {"activations": a, "top_ids": np.zeros((len(ids), 2), np.int64),
                                "top_probs": np.ones((len(ids), 2), np.float32)})()

    info, ids = make_info(d_model=64), list(range(12))
    on = EngineCaches(tmp_path, enabled=True)
    first = on.capture(info, ids, compute)
    hit = on.capture(info, ids, compute)
    assert len(calls) == 1 and hit.activations.tobytes() == first.activations.tobytes()
    monkeypatch.setenv("NLA_TUI_NO_CACHE", "1")
    off = EngineCaches(tmp_path)
    assert not off.enabled
    off.capture(info, ids, compute)
    assert len(calls) == 2
    # An unusable cache location degrades to no caching instead of failing the engine.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert not EngineCaches(blocker, enabled=True).enabled
    c = ActivationCache(tmp_path / "c")
    key = c.key(IDENT, ids)
    c.path_for(key).parent.write_text("a file where the shard dir should be")
    c.put(IDENT, ids, acts_for(0))  # the write fails: silently skipped
    assert c.get(IDENT, ids) is None
