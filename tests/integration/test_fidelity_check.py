"""The quantisation self-check (`nla-tui check --fidelity`) on the real demo pair, CPU: the
reference (fp32 here) is read again from disk and compared with the running models."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from nla_tui.core.models.loading import resolve_checkpoint
from nla_tui.core.models.reference import layer_activations, reference_model
from nla_tui.core.runtime.engine import Engine
from nla_tui.core.runtime.fidelity_check import check_fidelity
from textual.widgets import Static

from nla_tui.core.runtime.worker import EngineWorker
from nla_tui.ui.app import create_app
from nla_tui.ui.options import UiOptions
from nla_tui.ui.screens.fidelity import FidelityScreen
from nla_tui.ui.widgets.status import StatusLine
from tests._support_engine import reusing_demo_loads
from tests._support_paths import REPO
from tests._support_ui import async_test, wait_until

pytestmark = pytest.mark.slow
SMALL = {"positions": 4, "tokens": 12}  # enough to see a drift, short enough for 2 cores


@pytest.fixture
def fidelity_restored(demo_engine):
    """The check writes its verdict onto the shared engine's ModelInfo: put it back."""
    info = demo_engine.info
    saved = (info.fidelity, info.fidelity_drifts)
    yield demo_engine
    info.fidelity, info.fidelity_drifts = saved


@pytest.fixture(scope="module")
def nf4_subject_report(demo_engine, demo_tokenizer, demo_paths):
    """The demo pair with only the subject in bitsandbytes nf4 (the AV and AR: the shared
    engine's fp32 models), checked once for the module."""
    engine = Engine.from_options(preset="demo", device="cpu", quant="fp32", subject_quant="nf4", cache=False)
    with reusing_demo_loads(demo_tokenizer, demo_paths, demo_engine, models=("av", "ar")):
        engine.load()
    assert engine.info.quants == {"subject": "nf4", "av": "fp32", "ar": "fp32"}
    assert engine.info.quant == "subject nf4 · av fp32 · ar fp32"
    report, cached = check_fidelity(engine, **SMALL)
    assert not cached
    return engine, report


def test_same_precision_shows_no_drift(fidelity_restored):
    report, cached = check_fidelity(fidelity_restored, with_open=False, **SMALL)
    assert not cached and report.running["subject"] == report.reference == "fp32"
    assert report.cos_min > 0.99999  # the same fp32 weights, read again from disk
    assert report.fve_running == pytest.approx(report.fve_reference, abs=1e-6)
    assert report.subject_drop == pytest.approx(0.0, abs=1e-6) and not report.drifts
    assert report.ar_reference is None  # the AR runs in the reference precision: nothing to compare
    assert report.verdict().startswith("fp32 subject: readouts within 0.02 fve of fp32")
    assert fidelity_restored.info.fidelity == report.verdict() and not fidelity_restored.info.fidelity_drifts


def test_nf4_subject_drifts_more_than_fp32(nf4_subject_report, fidelity_restored):
    engine, nf4 = nf4_subject_report
    same, _ = check_fidelity(fidelity_restored, with_open=False, **SMALL)
    assert nf4.cos_min < 0.99 < same.cos_min  # nf4 moves layer-12 activations (BENCHMARKS.md: min ~0.89)
    assert nf4.cos_median < same.cos_median
    assert nf4.subject_drop > same.subject_drop
    table = "\n".join(nf4.table())
    assert "nf4" in table and "verdict: nf4 subject:" in table
    if nf4.subject_drifts:  # what a drift tells the user to do
        assert "--subject-quant fp32" in nf4.advice() and "--quant auto" in nf4.advice()
        assert engine.info.fidelity_drifts


def test_sabotaged_subject_is_flagged(fidelity_restored):
    """Weights perturbed in memory (the reference is read from disk, so it is not)."""
    layer = fidelity_restored.subject.decoder.layers[4].mlp.down_proj
    saved = layer.weight.detach().clone()
    try:
        with torch.no_grad():
            gen = torch.Generator().manual_seed(0)
            layer.weight.add_(torch.randn(layer.weight.shape, generator=gen) * saved.std() * 3)
        report, _ = check_fidelity(fidelity_restored, with_open=False, **SMALL)
    finally:
        with torch.no_grad():
            layer.weight.copy_(saved)
    assert report.cos_min < 0.9
    assert report.subject_drifts and report.drifts
    assert ("drift" in report.subject_verdict() or "activations differ" in report.subject_verdict())
    assert fidelity_restored.info.fidelity_drifts and report.advice()


def test_reference_offloads_within_a_small_budget(demo_engine, demo_paths):
    """A forced budget smaller than the model puts layers on disk (how a 27B reference fits
    beside three nf4 models); the activations are those of the whole fp32 model in memory."""
    ckpt = resolve_checkpoint(demo_paths["subject"])
    ids = [t.token_id for t in demo_engine.tokens]
    layer = demo_engine.subject.layer
    whole = layer_activations(demo_engine.subject.model, layer, ids, "cpu")
    with reference_model(ckpt, "fp32", "cpu", layer + 1, budget=900 << 20) as ref:
        assert "disk" in set(map(str, ref.device_map.values()))
        assert "disk" in ref.placement
        n_layers = len(ref.model.model.layers)
        offloaded = layer_activations(ref.model, layer, ids, "cpu")
    assert n_layers == layer + 1  # the layers after K are never built
    np.testing.assert_array_equal(offloaded, whole)


def test_cli_fidelity_check_is_cached(tmp_path):
    env = {**os.environ, "NLA_TUI_NO_CACHE": "0", "PYTHONPATH": str(REPO)}
    chat = tmp_path / "chat.json"
    chat.write_text(json.dumps([{"role": "user", "content": "Name a famous museum in Paris."},
                                {"role": "assistant", "content": "The Louvre."}]))
    args = [sys.executable, "-m", "nla_tui.cli", "check", "--fidelity", "--preset", "demo", "--device", "cpu",
            "--cache-dir", str(tmp_path / "cache"), "--positions", "2", "--explain-tokens", "8",
            "--messages", str(chat)]
    first = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "verdict: fp32 subject: readouts within 0.02 fve of fp32" in first.stdout
    assert "fixed conversation (107 tokens); open session (" in first.stdout  # --messages read beside it
    files = list((tmp_path / "cache" / "fidelity" / "v1").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["running"]["subject"] == "fp32"
    second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert second.returncode == 0 and "cached result" in second.stderr
    assert "[fidelity] reference subject" not in second.stderr  # nothing recomputed
    assert second.stdout == first.stdout


def test_cli_refuses_unknown_precision_before_loading():
    for flags in (["--quant", "nf3"], ["--subject-quant", "auto"]):
        r = subprocess.run([sys.executable, "-m", "nla_tui.cli", "check", "--fidelity", *flags],
                           capture_output=True, text=True, timeout=120, cwd=REPO,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
        assert r.returncode == 2 and "invalid choice" in r.stderr and "[subject]" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "nla_tui.cli", "check", "--fidelity", "--messages", "/nonexistent.json"],
                       capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 2 and "does not exist" in r.stderr and "[subject]" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "nla_tui.cli", "check", "--recheck"], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    assert r.returncode == 2 and "add --fidelity" in r.stderr


@async_test
async def test_tui_F_runs_the_check_on_the_engine_and_shows_the_table(fidelity_restored):
    """The key, the job on the real engine's worker (the open session read beside the fixed
    conversation), the dialog with the check's own table, the status line."""
    app = create_app(lambda emit: EngineWorker(fidelity_restored, emit), UiOptions())
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.state.info is not None and app.state.tokens, "the models", 900)
        await pilot.press("F")
        await wait_until(pilot, lambda: isinstance(app.screen, FidelityScreen), "the fidelity table", 900)
        table = str(app.screen.query_one("#fidelity-lines", Static).render())
        assert "fixed conversation" in table and "open session" in table
        assert "verdict: fp32 subject: readouts within 0.02 fve of fp32" in table
        assert "self-check ok" in str(app.query_one(StatusLine).render())
        await pilot.press("escape")


def test_the_python_api_runs_the_check(fidelity_restored):
    from nla_tui.core.api import Nla

    nla = Nla(fidelity_restored)
    try:
        report = nla.check_fidelity(positions=2)
    finally:
        nla.close()
    assert report.running == {"subject": "fp32", "av": "fp32", "ar": "fp32"} and report.explained == 2
    assert not report.drifts and nla.info.fidelity == report.verdict()


def test_engine_quant_auto_reads_the_checkpoints_configs(monkeypatch, demo_paths):
    """Engine.load's choice (before any weights load) on the demo checkpoints, with a CUDA card
    faked as the batch-size test fakes it (torch.cuda's own figures)."""
    from nla_tui.core.options import EngineOptions

    gib = 1 << 30
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device=None: 1.0, raising=False)
    ckpts = {r: resolve_checkpoint(demo_paths[r]) for r in ("subject", "av", "ar")}

    def picks(free: int, **opts) -> dict:
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=0: (free, 80 * gib))
        return Engine(EngineOptions(preset="demo", quant="auto", **opts))._quants(None, ckpts, "cuda")

    assert picks(80 * gib) == {"subject": "bf16", "av": "bf16", "ar": "bf16"}
    assert picks(80 * gib, subject_quant="nf4") == {"subject": "nf4", "av": "bf16", "ar": "bf16"}
    assert picks(gib // 2) == {"subject": "nf4", "av": "nf4", "ar": "nf4"}  # too small: nf4, and load says why
    assert Engine(EngineOptions(preset="demo", quant="auto"))._quants(None, ckpts, "cpu") == \
        {"subject": "fp32", "av": "fp32", "ar": "fp32"}
    assert Engine(EngineOptions(preset="demo", quant="bf16", subject_quant="fp32"))._quants(None, ckpts, "cpu") == \
        {"subject": "fp32", "av": "bf16", "ar": "bf16"}
