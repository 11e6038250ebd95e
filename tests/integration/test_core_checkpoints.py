"""Checkpoint loading: sidecar/tokenizer drift, the multimodal layout, nf4, `check`."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from nla_tui.core.errors import CheckpointError, NlaError
from nla_tui.core.models.loading import resolve_checkpoint, tokenizer_digest
from nla_tui.core.nla.sidecar import read_sidecar, validate_ar, validate_av
from tests._support_engine import reusing_demo_loads


def clone_ckpt(src: Path, dst: Path, edit=None) -> Path:
    """A copy of a demo checkpoint whose weights are symlinked (cheap) and whose
    sidecar is edited by `edit(meta_dict)`."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).symlink_to(f) if f.suffix == ".safetensors" else shutil.copy(f, dst / f.name)
    if edit:
        meta = yaml.safe_load((dst / "nla_meta.yaml").read_text())
        edit(meta)
        (dst / "nla_meta.yaml").write_text(yaml.safe_dump(meta, allow_unicode=True))
    return dst


def _validate_av_dir(path: Path, demo_tokenizer):
    # The clone's tokenizer files are copies of the demo AV's (clone_ckpt edits only the
    # sidecar): the session's demo tokenizer is what loading them gives (~6 s each).
    meta = read_sidecar(path)
    return validate_av(meta, demo_tokenizer, 640)


def _set(path: str, value):
    def edit(meta):
        d = meta
        keys = path.split(".")
        for k in keys[:-1]:
            d = d[k]
        if value is KeyError:
            del d[keys[-1]]
        else:
            d[keys[-1]] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    (_set("tokens.injection_token_id", 1234), "Tokenizer drift"),
    (_set("tokens.injection_left_neighbor_id", 5), "template drift"),
    (_set("tokens.injection_right_neighbor_id", 5), "template drift"),
    (_set("extraction.injection_scale", KeyError), "injection_scale"),
    (_set("prompt_templates.av", "No slot here, sorry."), "no {injection_char} slot"),
    (_set("prompt_templates.av", "<concept>{injection_char}</concept> and <concept>{injection_char}</concept>"), "expected exactly 1"),
    (_set("tokens", KeyError), "no `tokens` field"),
    (_set("d_model", 1024), "d_model=1024"),
    (_set("role", "critic"), "AR sidecar"),
])
def test_av_sidecar_drift_fails_loudly(demo_paths, demo_tokenizer, tmp_path, edit, message):
    path = clone_ckpt(demo_paths["av"], tmp_path / "av", edit)
    from nla_tui.core.errors import InputError

    # A sidecar that drifted is a broken checkpoint; an AR sidecar given as --av is the
    # user's mix-up (InputError). Each must be exactly that error, with its message.
    expected = InputError if "AR sidecar" in message else CheckpointError
    with pytest.raises(expected, match=message):
        meta = read_sidecar(path)
        if meta.role != "av":
            from nla_tui.core.nla.av import Verbalizer

            Verbalizer(None, None, meta)
        _validate_av_dir(path, demo_tokenizer)


def test_av_double_bos_detected(demo_paths, demo_tokenizer, tmp_path):
    path = clone_ckpt(demo_paths["av"], tmp_path / "av")
    tok = copy.copy(demo_tokenizer)  # the shared one keeps its template
    tok.chat_template = "{{ bos_token }}" + tok.chat_template  # template drift: a second <bos>
    with pytest.raises(CheckpointError, match="two <bos>"):
        validate_av(read_sidecar(path), tok, 640)


def test_missing_sidecar_and_older_key_names(demo_paths, demo_tokenizer, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="not an NLA checkpoint"):
        read_sidecar(bare)

    def to_old(meta):
        meta["role"] = "actor"
        meta["prompt_templates"] = {"actor": meta["prompt_templates"]["av"], "critic": meta["prompt_templates"]["ar"]}
    old = clone_ckpt(demo_paths["av"], tmp_path / "old", to_old)
    meta = read_sidecar(old)
    assert meta.role == "av" and "{injection_char}" in meta.av_template
    _validate_av_dir(old, demo_tokenizer)


def test_ar_checks(demo_paths, demo_tokenizer, tmp_path):
    ar = clone_ckpt(demo_paths["ar"], tmp_path / "ar", _set("critic.extraction_layer_index", 7))
    meta = read_sidecar(ar)
    # the AR ships the same tokenizer files (Engine.load then loads the tokenizer once)
    assert tokenizer_digest(resolve_checkpoint(ar)) == tokenizer_digest(resolve_checkpoint(demo_paths["av"]))
    tok = demo_tokenizer
    with pytest.raises(CheckpointError, match="K\\+1=8"):
        validate_ar(meta, tok, num_layers=13)
    sfx = clone_ckpt(demo_paths["ar"], tmp_path / "sfx", _set("tokens.critic_suffix_ids", [1, 2, 3]))
    with pytest.raises(CheckpointError, match="suffix drift"):
        validate_ar(read_sidecar(sfx), tok, 13)
    # The release's "sqrt_d_model" (and a sidecar that omits mse_scale) mean sqrt(d_model)
    # of that checkpoint: the AR normalises its MSE by the residual width it was trained on.
    for value in ("sqrt_d_model", KeyError):
        named = clone_ckpt(demo_paths["ar"], tmp_path / f"mse-{value is KeyError}", _set("extraction.mse_scale", value))
        meta = read_sidecar(named)
        assert meta.mse_scale == pytest.approx(meta.d_model ** 0.5) and meta.d_model > 1
    wide = clone_ckpt(demo_paths["ar"], tmp_path / "wide", lambda m: (_set("d_model", 4 * m["d_model"])(m),
                                                                     _set("extraction.mse_scale", "sqrt_d_model")(m)))
    assert read_sidecar(wide).mse_scale == pytest.approx(2 * read_sidecar(named).mse_scale)


def test_missing_value_head_is_named(demo_engine, demo_paths, tmp_path):
    from nla_tui.core.nla.ar import Reconstructor

    ar = clone_ckpt(demo_paths["ar"], tmp_path / "ar")
    (ar / "value_head.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no value_head.safetensors"):
        Reconstructor(demo_engine.ar.model, demo_engine.ar.tok, read_sidecar(ar), ar, None)


def _cli(capsys, *args):
    """`cli.main` in-process (HF_HUB_OFFLINE=1 from conftest): its exit code and output.
    An exception other than the documented one-paragraph error escapes and fails the
    test with its traceback. The CLI's own process is tested in test_core_cli_worker.py."""
    from nla_tui import cli

    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_command(demo_paths, demo_tokenizer, tmp_path, capsys):
    bad = clone_ckpt(demo_paths["av"], tmp_path / "av", _set("tokens.injection_token_id", 99))
    with reusing_demo_loads(demo_tokenizer, demo_paths):  # the demo's tokenizer files: loaded once
        code, out, err = _cli(capsys, "check", "--preset", "demo")
        assert code == 0, err
        assert "pair is consistent" in out
        # A directory is named once per line (no `path -> path`).
        subject = next(line for line in out.splitlines() if line.startswith("subject"))
        assert "->" not in subject and str(demo_paths["subject"]) in subject
        code, out, err = _cli(capsys, "check", "--preset", "demo", "--av", str(bad))
        assert code == 2 and "Tokenizer drift" in err and "Traceback" not in err
    code, out, err = _cli(capsys, "check", "--preset", "gemma3-27b")
    assert code == 2 and "huggingface-cli download google/gemma-3-27b-it" in err
    assert "HF_TOKEN" in err and "Traceback" not in err
    code, out, err = _cli(capsys, "run", "--preset", "nope", "--prompt", "hi")
    assert code == 2 and "Unknown preset" in err


# ------------------------------------------------------------------ multimodal layout

def _tiny_multimodal(path: Path, layers: int, tok_dir: Path) -> None:
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    torch.manual_seed(0)
    cfg = Gemma3Config(
        text_config=dict(vocab_size=262208, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=32, sliding_window=64,
                         max_position_embeddings=512),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14),
        mm_tokens_per_image=4,
    )
    model = Gemma3ForConditionalGeneration(cfg).eval()
    model.save_pretrained(path)
    for f in tok_dir.iterdir():
        if f.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy(f, path / f.name)


def test_multimodal_wrapper_loads_and_round_trips(demo_paths, demo_tokenizer, tmp_path):
    """The released Gemma AV/AR keep Gemma3ForConditionalGeneration (text_config,
    model.language_model). A tiny random one goes through the same engine path."""
    from nla_tui.core.runtime.engine import Engine

    src_av = read_sidecar(demo_paths["av"])
    subj, av, ar = tmp_path / "subject", tmp_path / "av", tmp_path / "ar"
    _tiny_multimodal(subj, 4, demo_paths["av"])
    _tiny_multimodal(av, 4, demo_paths["av"])
    _tiny_multimodal(ar, 3, demo_paths["av"])  # K=2 -> K+1 = 3 layers
    for d, role in ((av, "av"), (ar, "ar")):
        meta = yaml.safe_load((demo_paths[role] / "nla_meta.yaml").read_text())
        meta["d_model"] = 64
        meta["extraction_layer_index"] = 2
        meta["extraction"]["mse_scale"] = "sqrt_d_model"
        meta.pop("fve_variance", None)  # a pair with no published variance baseline
        if role == "av":
            meta["extraction"]["injection_scale"] = 50.0
        else:
            meta["critic"] = {"extraction_layer_index": 2}
        (d / "nla_meta.yaml").write_text(yaml.safe_dump(meta, allow_unicode=True))
    from safetensors.torch import save_file

    save_file({"weight": torch.randn(64, 64)}, str(ar / "value_head.safetensors"))
    eng = Engine.from_options(subject=str(subj), av=str(av), ar=str(ar), device="cpu", quant="fp32")
    with reusing_demo_loads(demo_tokenizer, demo_paths):  # the tiny models' tokenizer files are the demo's
        info = eng.load()
    assert info.layer == 2 and info.d_model == 64 and src_av.injection_char == "㈜"
    from transformers import Gemma3ForConditionalGeneration

    assert isinstance(eng.av.model, Gemma3ForConditionalGeneration)
    assert isinstance(eng.ar.decoder.norm, torch.nn.Identity)
    assert len(eng.ar.decoder.layers) == 3
    eng.set_conversation([__import__("nla_tui.core.types", fromlist=["Message"]).Message("user", "Hello there")])
    assert eng.activations.shape == (len(eng.tokens), 64)
    from nla_tui.core.types import Sampling

    ex = eng.explain([3], Sampling(max_new_tokens=4))[0]
    assert ex.score is not None and np.isfinite(ex.score.cos)
    assert ex.score.fve_nrm is None  # no variance baseline known for this pair


def test_nf4_path_runs_on_cpu(demo_engine):
    """bitsandbytes 4-bit on CPU: the subject loads in nf4 and captures activations
    close to the fp32 ones (quantisation changes them, but not their direction)."""
    from nla_tui.core.models.loading import load_model, resolve_checkpoint
    from nla_tui.core.models.subject import Subject

    ck = resolve_checkpoint(demo_engine.subject.model.name_or_path)
    model = load_model(ck, "nf4", "cpu")
    assert any("4bit" in type(m).__name__ for m in model.modules())
    subj = Subject(model, demo_engine.subject.tok, demo_engine.subject.layer)  # same files as ck's
    ids = [t.token_id for t in demo_engine.tokens]
    cap = subj.capture(ids)
    a, b = cap.activations[1:], demo_engine.activations[1:]
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    assert np.isfinite(a).all() and np.median(cos) > 0.8
    assert not np.allclose(a, b)


def _fake_hub_cache(root: Path, repo: str, src: Path) -> str:
    """Lay a checkpoint out exactly as huggingface_hub caches a download
    (models--owner--name/refs/main -> snapshots/<commit>/files)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = root / ("models--" + repo.replace("/", "--"))
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    for f in src.iterdir():
        (snap / f.name).symlink_to(f.resolve())
    return commit


def test_hub_ids_resolve_offline_from_the_hf_cache(demo_paths, demo_tokenizer, tmp_path, monkeypatch):
    """The released pairs load by hub id from the HF cache (HF_HUB_OFFLINE=1): the demo
    pair, laid out as a hub download, goes through that path and loads fully."""
    hub = tmp_path / "hub"
    commits = {k: _fake_hub_cache(hub, f"local-test/nla-demo-{k}", demo_paths[k]) for k in ("subject", "av", "ar")}
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    ck = resolve_checkpoint("local-test/nla-demo-av")
    assert ck.revision == commits["av"] and (ck.path / "nla_meta.yaml").is_file()
    from nla_tui.core.runtime.engine import Engine

    eng = Engine.from_options(subject="local-test/nla-demo-subject", av="local-test/nla-demo-av",
                              ar="local-test/nla-demo-ar", device="cpu", quant="fp32", cache=False)
    with reusing_demo_loads(demo_tokenizer, demo_paths):  # weights load from the hub layout; tokenizers once
        info = eng.load()
    assert info.av == "local-test/nla-demo-av" and info.revision["ar"] == commits["ar"]
    assert info.layer == 12 and not info.untrained_av and "trained here" in info.pair_note
    with pytest.raises(NlaError, match="not in the local Hugging Face cache"):
        resolve_checkpoint("local-test/absent-repo")


def test_byte_identical_tokenizer_files_load_one_tokenizer(demo_paths, tmp_path, monkeypatch):
    """Engine.load's tokenizers: the demo's subject, AV and AR ship the same files, so one
    load serves all three (each is ~6 s on 2 cores); a changed file gets its own load."""
    import shutil

    import nla_tui.core.models.loading as loading

    other = tmp_path / "ar"
    shutil.copytree(demo_paths["ar"], other)
    cfg = other / "tokenizer_config.json"
    cfg.write_text(cfg.read_text() + "\n")  # one byte more: no longer the same files
    loads = []
    monkeypatch.setattr(loading, "load_tokenizer", lambda ckpt: loads.append(ckpt.path) or object())
    ckpts = {r: resolve_checkpoint(demo_paths[r]) for r in ("subject", "av", "ar")}
    toks = loading.load_tokenizers({**ckpts, "other": resolve_checkpoint(other)})
    assert len(loads) == 2
    assert toks["subject"] is toks["av"] is toks["ar"] and toks["other"] is not toks["ar"]
