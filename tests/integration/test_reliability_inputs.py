"""Reliability (issue 10), items 6-10: bad inputs get one clear paragraph and exit 2, before
any slow work; the demo's tokenizer is checked. Items 1-5 are in test_reliability.py."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from nla_tui import cli
from nla_tui.core.errors import CheckpointError, InputError
from nla_tui.core.store.export import export_session, to_html, to_json, to_markdown
from nla_tui.core.store.session import load_session, save_session
from nla_tui.core.types import Explanation, Message, Sampling, Score
from tests._support_session import REAL_SESSION, make_session

from tests._support_reliability import (REPO, INJECT, MARKUP, snapshot, main, no_load, clone_ckpt, write_value_head, strict_json)  # noqa: F401 (no_load is a fixture)


def test_6_messages_given_a_directory(tmp_path, capsys, no_load):
    code, _, err = main(capsys, "run", "--preset", "demo", "--messages", str(tmp_path))
    assert code == 2 and "is a folder" in err


def test_6_conversation_longer_than_the_context(demo_engine):
    before = (list(demo_engine.tokens), demo_engine.activations.copy())
    long = "hello " * 40_000  # ~40k tokens; the subject reads 32,768 positions
    with pytest.raises(InputError, match=r"at most 32,?768"):  # issue 12's or issue 10's check, whichever runs first
        demo_engine.set_conversation([Message("user", long)])
    with pytest.raises(InputError, match=r"at most 32,?768"):
        demo_engine.chat(long, max_new_tokens=4)
    assert demo_engine.tokens == before[0] and np.array_equal(demo_engine.activations, before[1])


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(models=[1, 2]), "malformed field"),
    (lambda d: d["tokens"].__setitem__(0, "a string"), "malformed field"),
    (lambda d: d["explanations"].__setitem__(0, {"index": "x"}), "malformed field"),
    (lambda d: d["tokens"][1].update(top=[{"token_id": 1, "text": "x", "prob": "high"}]), "malformed field"),
    (lambda d: d["models"].update(layer=[12]), "malformed field"),
])
def test_6_malformed_session_fields(tmp_path, capsys, mutate, message):
    d = tmp_path / "s"
    shutil.copytree(REPO / REAL_SESSION, d)
    doc = json.loads((d / "session.json").read_text())
    mutate(doc)
    (d / "session.json").write_text(json.dumps(doc))
    before = snapshot(d)
    for fmt in ("md", "json", "html"):
        code, _, err = main(capsys, "export", str(d), "--format", fmt)
        assert code == 2 and message in err
    assert snapshot(d) == before


def _edit(path: str, value):
    def edit(meta):
        d, keys = meta, path.split(".")
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return edit


@pytest.mark.parametrize("role, edit, message", [
    ("av", _edit("tokens", [1, 2, 3]), "must be a mapping"),
    ("av", _edit("prompt_templates.av", "Explain <concept>{injection_char}</concept> {oops}"), "stray brace"),
    ("av", _edit("prompt_templates.av", "Explain <concept>{injection_char}</concept> {0}"), "stray brace"),
    ("ar", _edit("prompt_templates.ar", "Summary {explanation} {"), "stray brace"),
    ("av", _edit("d_model", "wide"), "whole number"),
])
def test_6_malformed_sidecars(demo_paths, tmp_path, capsys, role, edit, message):
    ck = clone_ckpt(demo_paths[role], tmp_path / role, edit)
    before = snapshot(ck)
    code, _, err = main(capsys, "check", "--preset", "demo", f"--{role}", str(ck))
    assert code == 2 and message in err, err
    assert snapshot(ck) == before


def test_6_corrupt_subject_config_and_garbage_value_head(demo_paths, tmp_path, capsys):
    subj = clone_ckpt(demo_paths["subject"], tmp_path / "subject")
    (subj / "config.json").write_text('{"model_type": "gemma3_text", "hidden_size": 6')
    code, _, err = main(capsys, "check", "--preset", "demo", "--subject", str(subj))
    assert code == 2 and "config.json is unreadable" in err
    ar = clone_ckpt(demo_paths["ar"], tmp_path / "ar", copy=("value_head.safetensors",))
    (ar / "value_head.safetensors").unlink()
    (ar / "value_head.safetensors").write_bytes(os.urandom(4096))
    code, _, err = main(capsys, "check", "--preset", "demo", "--ar", str(ar))
    assert code == 2 and "not a readable safetensors file" in err


# ------------------------------------------------------------------ 7. check catches what run would trip on


@pytest.mark.parametrize("case, message", [
    ("ar_d_model", "d_model=640 but the AR's says 1024"),
    ("nan_head", "non-finite"),
    ("shape_head", "of shape (640, 640)"),
    ("garbage_head", "not a readable safetensors"),
    ("nan_scale", "finite number above 0"),
    ("model_type", "not understood by this transformers"),
    ("truncated_weights", "truncated"),
])
def test_7_check_catches_inconsistent_checkpoints(demo_paths, tmp_path, capsys, case, message):
    args = ["check", "--preset", "demo"]
    if case == "ar_d_model":
        args += ["--ar", str(clone_ckpt(demo_paths["ar"], tmp_path / "ar", _edit("d_model", 1024)))]
    elif case.endswith("_head"):
        ar = clone_ckpt(demo_paths["ar"], tmp_path / "ar", copy=("value_head.safetensors",))
        vh = ar / "value_head.safetensors"
        if case == "nan_head":
            write_value_head(vh, np.full((640, 640), np.nan))
        elif case == "shape_head":
            write_value_head(vh, np.eye(64))
        else:
            vh.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage} and more")
        args += ["--ar", str(ar)]
    elif case == "nan_scale":
        args += ["--av", str(clone_ckpt(demo_paths["av"], tmp_path / "av",
                                        _edit("extraction.injection_scale", float("nan"))))]
    elif case == "model_type":
        subj = clone_ckpt(demo_paths["subject"], tmp_path / "subject")
        cfg = json.loads((subj / "config.json").read_text())
        cfg["model_type"] = "gemma99_text"
        (subj / "config.json").write_text(json.dumps(cfg))
        args += ["--subject", str(subj)]
    else:
        subj = clone_ckpt(demo_paths["subject"], tmp_path / "subject")
        (subj / "model.safetensors").unlink()
        with open(demo_paths["subject"] / "model.safetensors", "rb") as src:
            (subj / "model.safetensors").write_bytes(src.read(1 << 20))  # header intact, data cut
        args += ["--subject", str(subj)]
    code, out, err = main(capsys, *args)
    assert code == 2 and message in err, (out, err)
    assert "pair is consistent" not in out


# ------------------------------------------------------------------ 8. every argument checked before loading


@pytest.mark.parametrize("extra, message", [
    (["--explain", "-3,4"], "negative"),
    (["--explain", ""], "explains nothing"),
    (["--explain", "3,x"], "comma list"),
    (["--max-new-tokens", "0"], "at least 1"),
    (["--max-explain-tokens", "-5"], "at least 1"),
    (["--temperature", "nan"], "0 (greedy) or above"),
    (["--fve-variance", "inf"], "finite number above 0"),
    (["--av-prompt", "no slot here"], "exactly once"),
    (["--layer", "-1"], "negative"),
    (["--out", "/proc/nla-tui-test/s"], "not writable"),
])
def test_8_bad_arguments_fail_before_any_model_loads(capsys, no_load, extra, message):
    code, _, err = main(capsys, "run", "--preset", "demo", "--prompt", "Hi", *extra)
    assert code == 2 and message in err, err
    assert "Traceback" not in err


def test_8_out_under_a_file_and_devices_without_cuda(tmp_path, capsys, no_load):
    f = tmp_path / "file"
    f.write_text("x")
    code, _, err = main(capsys, "run", "--preset", "demo", "--prompt", "Hi", "--out", str(f / "s"))
    assert code == 2 and "is a file" in err
    code, _, err = main(capsys, "run", "--preset", "demo", "--prompt", "Hi", "--devices", "subject=0,av=1",
                        "--device", "cpu", "--explain", "bad")
    assert code == 2 and "warning: --devices" in err and "ignored" in err


# ------------------------------------------------------------------ 10. the demo's saved tokenizer is verified


def test_10_saved_tokenizer_must_reproduce_the_gguf_ids(demo_paths, demo_tokenizer, tmp_path):
    """The build calls verify_saved_tokenizer(GGUF tokenizer, saved dir). Loading the GGUF
    tokenizer takes minutes on 2 cores, so the reference here is the demo's own saved
    tokenizer, which that check compared with the GGUF's when the demo was built."""
    from nla_tui.core.nla.demo_tokenizer import TokenizerMismatch, verify_saved_tokenizer

    gguf_tok = demo_tokenizer
    verify_saved_tokenizer(gguf_tok, demo_paths["subject"])  # a faithful copy passes
    broken = tmp_path / "tok"
    shutil.copytree(demo_paths["subject"], broken, ignore=shutil.ignore_patterns("*.safetensors"))
    tj = json.loads((broken / "tokenizer.json").read_text())
    tj["model"]["merges"] = []  # what transformers 5.17 wrote: a character-level tokenizer
    (broken / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(TokenizerMismatch, match=r"transformers.*pip install -U"):
        verify_saved_tokenizer(gguf_tok, broken)


def test_10_pyproject_lower_bound_is_the_version_the_error_names():
    import re

    from nla_tui.core.nla.demo_tokenizer import WORKING_TRANSFORMERS

    spec = (REPO / "pyproject.toml").read_text()
    assert re.search(r'"transformers>=([\d.]+)"', spec).group(1) == WORKING_TRANSFORMERS
