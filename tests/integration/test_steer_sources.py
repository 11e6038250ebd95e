"""Steering with a vector from anywhere (issue 26 item 2) on the real Gemma 3 270M demo pair:
a file vector steers exactly like the same vector given as a − b of two tokens (.safetensors
and .npy), an SAE decoder row exactly like that row saved as a file, malformed files are
refused before any model runs, and the result records where its vector came from."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from nla_tui.core.errors import InputError
from nla_tui.core.runtime import steer as steer_ops
from nla_tui.core.runtime.steer_vectors import resolve
from nla_tui.core.steer_results import SteerResult
from nla_tui.core.steer_sources import MEDIAN_NORM, TOKEN_NORM, FileVector, SaeFeature, TextReading, TokenDifference
from nla_tui.core.types import Message, Sampling
from tests._support_engine import engine_sharing_models

QUICK = Sampling(max_new_tokens=24)
FACT = [Message("user", "What is the capital of France?"), Message("assistant", "The capital of France is Paris.")]
ALPHA, TOKENS = 0.5, 8  # a visible push (steer_jobs.DEFAULT_ALPHA), short continuations (2 cores)


@pytest.fixture(scope="module")
def engine(demo_engine):
    """Its own Engine over the shared demo models (the shared conversation is left alone)."""
    return engine_sharing_models(demo_engine, FACT)


def _index(engine, text: str, role: str = "model") -> int:
    return next(t.index for t in engine.tokens if t.text == text and t.role == role)


def _steer(engine, index: int, source) -> SteerResult:
    return steer_ops.steer(engine, index, alpha=ALPHA, max_new_tokens=TOKENS, keep=False, source=source)


def _same_steer(x: SteerResult, y: SteerResult) -> None:
    assert x.steered_ids == y.steered_ids and x.steered_tokens == y.steered_tokens
    assert x.original_ids == y.original_ids
    assert [(c.token_id, c.prob) for c in x.after] == [(c.token_id, c.prob) for c in y.after]
    assert x.vector_norm == y.vector_norm


def test_a_file_vector_steers_exactly_like_the_same_a_minus_b(engine, tmp_path):
    """activation[a] − activation[b] written to a .safetensors and a .npy: the same vector
    added, the same top-5 and continuation, the same explanation of the vector."""
    i, a, b = _index(engine, " is"), _index(engine, " Paris"), _index(engine, " France", "user")
    acts = engine.activations
    diff = acts[a] - acts[b]
    save_file({"other": np.ones(3, np.float32), "paris_minus_france": diff}, str(tmp_path / "d.safetensors"))
    np.save(tmp_path / "d.npy", diff[None])  # [1, d_model] is one vector too

    sources = [TokenDifference(a, b), FileVector(str(tmp_path / "d.safetensors"), "paris_minus_france"),
               FileVector(str(tmp_path / "d.npy"))]
    vectors = [resolve(engine, s)[1] for s in sources]
    for v in vectors:
        np.testing.assert_array_equal(v.scaled(ALPHA), vectors[0].scaled(ALPHA))
        assert v.unit == MEDIAN_NORM
        assert v.unit_norm == pytest.approx(float(np.median(np.linalg.norm(acts.astype(np.float64), axis=1))))
    results = [_steer(engine, i, s) for s in sources]
    for r in results[1:]:
        _same_steer(results[0], r)
    r = results[0]
    assert r.vector_norm == pytest.approx(ALPHA * vectors[0].unit_norm, rel=1e-5)
    assert r.steered_ids != r.original_ids or [c.token_id for c in r.after] != [c.token_id for c in r.before]
    assert r.source["kind"] == "difference" and (r.source["a"], r.source["b"]) == (a, b)
    assert results[1].source["name"] == "paris_minus_france" and results[2].source["kind"] == "file"
    assert r.source["norm"] == pytest.approx(float(np.linalg.norm(diff.astype(np.float64))), rel=1e-6)
    assert r.original_explanation == r.edited_explanation == "" and r.layer == engine.info.layer
    # the AV's reading of what was added: the same text for both
    exps = engine.explain_vectors(np.stack([vectors[0].scaled(ALPHA), vectors[1].scaled(ALPHA)]), QUICK)
    assert exps[0].text == exps[1].text and exps[0].raw == exps[1].raw


def test_malformed_vector_files_are_refused_before_anything_runs(engine, tmp_path):
    d = engine.info.d_model
    i = _index(engine, " is")
    np.save(tmp_path / "short.npy", np.ones(d - 1, np.float32))
    bad_nan = np.ones(d, np.float32)
    bad_nan[5] = np.nan
    np.save(tmp_path / "nan.npy", bad_nan)
    np.save(tmp_path / "ints.npy", np.ones(d, np.int64))
    np.save(tmp_path / "matrix.npy", np.ones((3, d), np.float32))
    np.save(tmp_path / "zeros.npy", np.zeros(d, np.float32))
    np.save(tmp_path / "pickle.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "text.npy").write_text("not numpy")
    (tmp_path / "text.safetensors").write_text("not a tensor file either")
    (tmp_path / "v.txt").write_text("1 2 3")
    save_file({"a": np.ones(d, np.float32), "b": np.ones(d, np.float32)}, str(tmp_path / "two.safetensors"))
    cases = [("short.npy", None, "d_model="), ("nan.npy", None, "NaN or infinite"), ("ints.npy", None, "floating point"),
             ("matrix.npy", None, "one row"), ("zeros.npy", None, "all zeros"), ("pickle.npy", None, "unpickling"),
             ("text.npy", None, "not a .npy file"), ("text.safetensors", None, "not a readable safetensors"),
             ("v.txt", None, "neither .npy nor .safetensors"), ("two.safetensors", None, "pick one with --name"),
             ("two.safetensors", "c", "has no tensor 'c'"), ("missing.npy", None, "does not exist")]
    calls, kept = dict(engine.counters), list(engine.steered)
    for name, tensor, message in cases:
        with pytest.raises(InputError, match=message):
            steer_ops.steer(engine, i, alpha=ALPHA, max_new_tokens=TOKENS, source=FileVector(str(tmp_path / name), tensor))
    with pytest.raises(InputError, match="zero vector"):
        steer_ops.steer(engine, i, source=TokenDifference(i, i))
    with pytest.raises(InputError, match="out of range"):
        steer_ops.steer(engine, i, source=TokenDifference(i, 10_000))
    assert engine.counters == calls and engine.steered == kept  # no model ran, nothing kept


def _sae(directory, d_model: int, hook: str | None, d_sae: int = 6, seed: int = 1):
    """An SAE in sae-lens's layout (sae.save_model): cfg.json and sae_weights.safetensors."""
    rng = np.random.default_rng(seed)
    directory.mkdir()
    cfg = {"architecture": "standard", "d_in": d_model, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
           "model_name": "gemma-3-270m-it", "hook_head_index": None, "apply_b_dec_to_input": True,
           "normalize_activations": "none"}
    if hook is not None:
        cfg["hook_name"] = hook
    (directory / "cfg.json").write_text(json.dumps(cfg))
    w_dec = rng.standard_normal((d_sae, d_model)).astype(np.float32)
    save_file({"W_enc": np.ascontiguousarray(w_dec.T), "b_enc": np.zeros(d_sae, np.float32), "W_dec": w_dec,
               "b_dec": np.zeros(d_model, np.float32)}, str(directory / "sae_weights.safetensors"))
    return w_dec


def test_an_sae_decoder_row_steers_exactly_like_that_row_as_a_file(engine, tmp_path):
    d, k = engine.info.d_model, engine.info.layer
    i = _index(engine, " is")
    w_dec = _sae(tmp_path / "sae", d, f"blocks.{k}.hook_resid_post")
    np.save(tmp_path / "row4.npy", w_dec[4])
    by_sae = _steer(engine, i, SaeFeature(str(tmp_path / "sae"), 4))
    by_file = _steer(engine, i, FileVector(str(tmp_path / "row4.npy")))
    _same_steer(by_sae, by_file)
    assert by_sae.source["kind"] == "sae" and by_sae.source["feature"] == 4 and by_sae.source["layer"] == k
    assert by_sae.source["unit"] == MEDIAN_NORM and "warnings" not in by_sae.source

    calls = dict(engine.counters)
    _sae(tmp_path / "other", d, f"blocks.{k + 1}.hook_resid_pre")  # resid_pre of K+1 is K's output: fine
    assert resolve(engine, SaeFeature(str(tmp_path / "other"), 0))[1].layer == k
    _sae(tmp_path / "wrong_layer", d, f"blocks.{k - 2}.hook_resid_post")
    with pytest.raises(InputError, match=f"reads layer {k - 2}.*act on layer {k}.*--any-layer"):
        steer_ops.steer(engine, i, source=SaeFeature(str(tmp_path / "wrong_layer"), 1))
    assert resolve(engine, SaeFeature(str(tmp_path / "wrong_layer"), 1, any_layer=True))[1].warnings
    _sae(tmp_path / "wide", d + 2, f"blocks.{k}.hook_resid_post")
    with pytest.raises(InputError, match="another model"):
        steer_ops.steer(engine, i, source=SaeFeature(str(tmp_path / "wide"), 1))
    with pytest.raises(InputError, match="out of range"):
        steer_ops.steer(engine, i, source=SaeFeature(str(tmp_path / "sae"), 6))
    _sae(tmp_path / "no_hook", d, None)
    assert "does not say which layer" in resolve(engine, SaeFeature(str(tmp_path / "no_hook"), 2))[1].warnings[0]
    assert engine.counters == calls


def test_the_text_reading_keeps_the_tokens_own_norm(engine):
    """An edited explanation is the fourth source: today's vector, in the token's norm."""
    i = _index(engine, " is")
    original = steer_ops.original_explanation(engine, i, QUICK)
    src, v = resolve(engine, TextReading(i, "The capital of Germany is Berlin.", original))
    assert v.unit == TOKEN_NORM and v.unit_norm == pytest.approx(float(np.linalg.norm(engine.activations[i])))
    np.testing.assert_array_equal(v.scaled(0.25), steer_ops.steering_vector(engine, i, original, src.edited, 0.25))


def test_cli_steers_with_a_file_like_with_the_same_a_minus_b_and_keeps_the_source(
        demo_paths, demo_tokenizer, demo_engine, tmp_path, capsys):
    """`nla-tui steer --vector FILE` and `--diff A,B` of the same vector on a saved session
    (models from memory): the same steered continuation printed and kept, each with its
    source, in the session and its Markdown export. (Bit-for-bit equality of the two sources
    is the first test's: here the file comes from the saved activations, --diff from the
    ones the CLI recaptures.)"""
    import shutil

    from nla_tui.core.store.export import to_markdown
    from nla_tui.core.store.session import load_session
    from tests._support_engine import reusing_demo_loads
    from tests._support_paths import DATA
    from tests._support_reliability import main

    d = tmp_path / "s"
    shutil.copytree(DATA / "recorded_session", d)
    session = load_session(d)
    a, b, at = 5, 9, len(session.tokens) - 3
    save_file({"v": session.activations[a] - session.activations[b]}, str(tmp_path / "v.safetensors"))
    runs = []
    with reusing_demo_loads(demo_tokenizer, demo_paths, demo_engine, models=("subject", "av", "ar")):
        for flags in (["--vector", str(tmp_path / "v.safetensors")], ["--diff", f"{a},{b}"]):
            code, out, err = main(capsys, "steer", str(d), "--token", str(at), *flags, "--alpha", "1",
                                  "--max-new-tokens", "6")
            assert code == 0, err
            runs.append(out)
    assert "vector: file" in runs[0] and f"vector: token {a} − token {b}" in runs[1]
    assert "median activation norm of the layer" in runs[0]
    steered = [line for line in runs[0].splitlines() if line.startswith("steered continuation")]
    assert steered and steered == [line for line in runs[1].splitlines() if line.startswith("steered continuation")]
    kept = load_session(d).steered[-2:]
    assert [k.source_kind for k in kept] == ["file", "difference"]
    # The file holds the saved activations' a − b, --diff the recaptured ones' (equal to ~1e-7)
    assert kept[0].steered_ids == kept[1].steered_ids
    assert kept[0].vector_norm == pytest.approx(kept[1].vector_norm, rel=1e-5)
    md = to_markdown(load_session(d))
    assert "vector: file" in md and f"token {a} − token {b} · layer {session.info.layer}" in md


def test_the_dialogs_file_source_steers_the_real_engine(demo_engine, tmp_path):
    """w, 'vector file', a path: the dialog shows the file's norm, layer K and alpha's unit;
    ctrl+s steers the real engine through the worker, and the result (its source named on
    the screen) is the continuation steering with the same vector as a − b gives."""
    from textual.widgets import Input, Label, RadioButton

    from nla_tui.core.runtime.worker import EngineWorker
    from nla_tui.core.steer_jobs import DEFAULT_ALPHA
    from nla_tui.core.types import CONTINUATION_TOKENS
    from nla_tui.ui.app import create_app
    from nla_tui.ui.options import UiOptions
    from nla_tui.ui.screens.steer import SteerDialog, SteeredScreen
    from tests._support_ui import async_test, wait_until

    guard = 900.0  # a hang guard on a loaded 2-core box, not a speed check
    n = len(demo_engine.tokens)
    i, a = n - 2, n - 4
    np.save(tmp_path / "v.npy", demo_engine.activations[a] - demo_engine.activations[i])
    want = steer_ops.steer(demo_engine, i, max_new_tokens=CONTINUATION_TOKENS, keep=False,
                           source=TokenDifference(a, i))
    app = create_app(lambda emit: EngineWorker(demo_engine, emit), UiOptions())

    @async_test
    async def body():
        async with app.run_test(size=(120, 36)) as pilot:
            await wait_until(pilot, lambda: len(app.state.tokens) == n and app.state.queue_depth == 0,
                             "models ready", guard)
            app.strip.set_cursor(i)
            await pilot.press("w")
            await wait_until(pilot, lambda: isinstance(app.screen, SteerDialog), "the dialog")
            dialog = app.screen
            dialog.query_one("#source-file", RadioButton).value = True
            dialog.query_one("#steer-file", Input).value = str(tmp_path / "v.npy")
            await pilot.pause()
            shown = str(dialog.query_one("#steer-vector", Label).render())
            norm = np.linalg.norm((demo_engine.activations[a] - demo_engine.activations[i]).astype(np.float64))
            assert f"‖v‖ {norm:.1f}" in shown and f"layer {demo_engine.info.layer}" in shown
            assert "α × median activation norm of the layer" in shown
            await pilot.press("ctrl+s")
            await wait_until(pilot, lambda: isinstance(app.screen, SteeredScreen), "the steered continuation", guard)
            got = app.screen.result
            assert got.source_kind == "file" and got.alpha == DEFAULT_ALPHA
            assert got.steered_ids == want.steered_ids and got.vector_norm == want.vector_norm
            head = str(app.screen.query_one("#steer-head").render())
            assert "file " in head and "median activation norm of the layer" in head
            assert app.keeper.snapshot().steered[-1] is got  # saved with the session
    body()
