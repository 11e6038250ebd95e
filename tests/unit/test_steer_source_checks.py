"""Steering sources without a model (issue 26 item 2): `nla-tui steer` refuses a malformed
vector file, SAE or a − b with one line before any model loads, the dialog's checks say the
same, and a steer's recorded source survives save/load (old steers, without one, still open)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from nla_tui.core.steer_results import SteerResult
from nla_tui.core.steer_sources import FileVector, SaeFeature, TextReading, TokenDifference, source_from_record, \
    source_spec
from nla_tui.core.store.session import load_session, save_session
from nla_tui.core.store.session_schema import SchemaError, check_session_doc
from tests._support_reliability import main, no_load, saved  # noqa: F401  (no_load is a fixture)
from tests._support_session import make_session

D = 16  # make_session's d_model; its layer is 6


def _files(tmp_path):
    np.save(tmp_path / "ok.npy", np.ones(D, np.float32))
    np.save(tmp_path / "short.npy", np.ones(D + 1, np.float32))
    nan = np.ones(D, np.float32)
    nan[0] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "ints.npy", np.ones(D, np.int32))
    np.save(tmp_path / "pickle.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 40)
    save_file({"W_dec": np.ones((4, D), np.float32)}, str(tmp_path / "sae_weights.safetensors"))


@pytest.mark.parametrize("flags, message", [
    (["--vector", "short.npy"], "d_model=16"),
    (["--vector", "nan.npy"], "NaN or infinite"),
    (["--vector", "ints.npy"], "floating point"),
    (["--vector", "pickle.npy"], "without unpickling"),
    (["--vector", "junk.safetensors"], "not a readable safetensors"),
    (["--vector", "ok.npy", "--name", "x"], "a .npy file with one array"),
    (["--edit", "x", "--name", "x"], "--name picks a tensor of a --vector file"),
    (["--diff", "1"], "not two token indices"),
    (["--diff", "1,99"], "out of range"),
    (["--diff", "2,2"], "zero vector"),
    (["--sae", "SAE"], "--sae needs --feature"),
    (["--edit", "x", "--feature", "3"], "go with --sae"),
    (["--sae", "SAE", "--feature", "1"], "reads layer 3"),
    (["--sae", "SAE", "--feature", "9", "--any-layer"], "out of range"),
])
def test_cli_refuses_a_bad_source_before_any_model_loads(tmp_path, capsys, no_load, flags, message):
    s = saved(tmp_path)
    _files(tmp_path)
    sae = tmp_path / "sae"
    sae.mkdir()
    (tmp_path / "sae_weights.safetensors").rename(sae / "sae_weights.safetensors")
    (sae / "cfg.json").write_text(json.dumps({"d_in": D, "d_sae": 4, "hook_name": "blocks.3.hook_resid_post"}))
    flags = [str(sae) if f == "SAE" else str(tmp_path / f) if f.endswith((".npy", ".safetensors")) else f
             for f in flags]
    code, out, err = main(capsys, "steer", str(s), "--token", "3", *flags)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_recorded_source_round_trips_and_an_old_steer_still_opens(tmp_path):
    session = make_session()
    old = SteerResult(index=3, token_text="x", layer=6, original_explanation="a", edited_explanation="b",
                      alpha=0.5, span="here", vector_norm=2.0)
    new = SteerResult(index=4, token_text="y", layer=6, original_explanation="", edited_explanation="", alpha=1.0,
                      span="onward", vector_norm=3.0,
                      source={**source_spec(FileVector("v.npy", "W")), "describe": "file v.npy [W]", "norm": 7.0,
                              "unit": "median activation norm of the layer", "unit_norm": 3.0})
    session.steered = [old, new]
    d = save_session(session, tmp_path / "s")
    doc = json.loads((d / "session.json").read_text())
    assert "source" not in doc["steered"][0] and doc["steered"][1]["source"]["kind"] == "file"
    back = load_session(d).steered
    assert back[0].source is None and back[0].source_kind == "text" and back[0].unit == "the token's activation norm"
    assert back[1].source == new.source and back[1].source_text == "file v.npy [W]"
    assert source_from_record(back[1].source, 4, "", "") == FileVector("v.npy", "W")
    assert source_from_record(back[0].source, 3, "b", "a") == TextReading(3, "b", "a")
    doc["steered"][1]["source"]["kind"] = "pickle"
    with pytest.raises(SchemaError, match=r"steered\[1\].source.kind"):
        check_session_doc(doc)
    doc["steered"][1]["source"] = {**new.source, "a": "one"}
    with pytest.raises(SchemaError, match=r"steered\[1\].source.a"):
        check_session_doc(doc)


@pytest.mark.parametrize("source", [FileVector("a.npy"), FileVector("b.safetensors", "t"), TokenDifference(2, 5),
                                    SaeFeature("sae/", 7), SaeFeature("sae/", 7, any_layer=True)])
def test_a_source_spec_names_the_source_again(source):
    spec = source_spec(source)
    assert source_from_record({**spec, "describe": source.describe()}, 0, "", "") == source


def test_exports_name_the_vector_and_escape_its_path():
    from nla_tui.core.store.export import to_html, to_markdown

    session = make_session()
    path = "<script>alert(1)</script>.npy"
    session.steered = [SteerResult(index=4, token_text="y", layer=6, original_explanation="", edited_explanation="",
                                   alpha=0.5, span="here", vector_norm=6.0,
                                   source={**source_spec(FileVector(path)), "describe": f"file {path}", "norm": 7.0,
                                           "unit": "median activation norm of the layer", "unit_norm": 12.0,
                                           "warnings": ["made <b>elsewhere</b>"]})]
    md = to_markdown(session)
    assert "vector: file" in md and "α × median activation norm of the layer (= 12.0)" in md
    assert "original explanation" not in md  # only an edited explanation's steer has one
    page = to_html(session)
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;.npy" in page
    assert "made &lt;b&gt;elsewhere&lt;/b&gt;" in page
