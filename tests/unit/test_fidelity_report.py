"""The self-check's verdict, table, cache file and where the verdict shows (status line,
exports), from hand-made reports (the real runs: tests/integration/test_fidelity_check.py)."""

from __future__ import annotations

import json

from nla_tui.core.fidelity_report import FidelityReport, quant_label, reference_precision
from nla_tui.core.store.fidelity_cache import fidelity_key, read_report, write_report
from nla_tui.core.types import ModelInfo


def report(**kw) -> FidelityReport:
    base = dict(running={"subject": "nf4", "av": "nf4", "ar": "nf4"}, reference="bf16", layer=41,
                conversations=["fixed conversation (90 tokens)"], positions=89, explained=12, cos_min=0.97,
                cos_median=0.995, fve_reference=0.75, fve_running=0.74, fve_running_vs_reference=0.745,
                ar_running=0.75, ar_reference=0.748, ar_abs_delta=0.004, key="k")
    return FidelityReport(**{**base, **kw})


def info(**kw) -> ModelInfo:
    base = dict(preset="gemma3-27b", subject="google/gemma-3-27b-it", av="av", ar="ar", layer=41, quant="nf4",
                device="cuda", d_model=5376, revision={"subject": "a", "av": "b", "ar": "c"})
    return ModelInfo(**{**base, **kw})


def test_verdict_within_and_drifting():
    ok = report()
    assert not ok.drifts and ok.verdict() == ("nf4 subject: readouts within 0.02 fve of bf16; "
                                              "nf4 AR: scores within 0.02 fve of bf16")
    assert ok.advice() == ""
    bad = report(fve_running=0.68)
    assert bad.subject_drifts and bad.subject_drop == 0.75 - 0.68
    assert bad.verdict().startswith("nf4 subject: readouts drift 0.070 fve from bf16")
    assert "--subject-quant bf16" in bad.advice() and "--quant auto" in bad.advice()
    # Explanations that read well on their own but describe other activations drift too.
    assert report(fve_running_vs_reference=0.70).subject_drifts
    # Activations that are another computation drift whatever the fve says.
    broken = report(cos_median=0.4, fve_running=0.9)
    assert broken.subject_drifts and "activations differ from bf16 (median cos 0.400" in broken.verdict()
    ar = report(ar_abs_delta=0.05)
    assert ar.ar_drifts and not ar.subject_drifts and "AR: scores drift 0.050" in ar.verdict()
    assert report(ar_reference=None, ar_abs_delta=0.0).ar_verdict() == "nf4 AR: runs in the reference precision"


def test_table_is_one_table_with_the_verdict():
    lines = report(fve_running=0.68, peak_gpu_bytes=30 << 30, reference_placement="cuda:0 30 layers · cpu 12 layers").table()
    text = "\n".join(lines)
    assert lines[0].startswith("fidelity self-check: layer 41")
    assert "0.9700 / 0.9950" in text and "+0.070" in text and "verdict: nf4 subject: readouts drift" in text
    assert "peak GPU 30.0 GiB" in text and "advice:" in text


def test_json_round_trip_and_bad_documents():
    r = report()
    assert FidelityReport.from_json(json.loads(json.dumps(r.to_json()))) == r
    for bad in ([], {"running": "nf4"}, {**r.to_json(), "cos_min": "x"}):
        try:
            FidelityReport.from_json(bad)
        except (TypeError, ValueError):
            continue
        raise AssertionError(f"accepted {bad!r}")


def test_cache_is_keyed_by_models_and_precisions(tmp_path):
    a = fidelity_key(info(), {"subject": "nf4", "av": "nf4", "ar": "nf4"}, "bf16")
    assert a != fidelity_key(info(), {"subject": "bf16", "av": "nf4", "ar": "nf4"}, "bf16")
    assert a != fidelity_key(info(revision={"subject": "z", "av": "b", "ar": "c"}),
                             {"subject": "nf4", "av": "nf4", "ar": "nf4"}, "bf16")
    assert read_report(a, tmp_path) is None
    path = write_report(report(key=a), tmp_path)
    assert read_report(a, tmp_path) == report(key=a)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
    path.write_text("{not json")
    assert read_report(a, tmp_path) is None  # damaged: a miss, the check runs again


def test_labels():
    assert quant_label({"subject": "nf4", "av": "nf4", "ar": "nf4"}) == "nf4"
    assert quant_label({"subject": "bf16", "av": "nf4", "ar": "int8"}) == "subject bf16 · av nf4 · ar int8"
    assert reference_precision("cuda:1") == "bf16" and reference_precision("cpu") == "fp32"


def test_status_line_and_exports_say_the_precision_and_verdict():
    from nla_tui.core.store.export import to_html, to_json, to_markdown
    from nla_tui.core.store.session import Session
    from nla_tui.ui.state import UiState
    from nla_tui.ui.widgets.status import status_text

    drifting = report(fve_running=0.68)
    i = info(quants={"subject": "nf4", "av": "nf4", "ar": "nf4"}, fidelity=drifting.verdict(), fidelity_drifts=True)
    state = UiState()
    state.info = i
    line = status_text(state, 0.0, False).plain
    assert "nf4" in line and "readouts drift from bf16: try --quant auto or --subject-quant bf16" in line
    state.info = info(fidelity=report().verdict())
    assert "self-check ok" in status_text(state, 0.0, False).plain
    session = Session(name="s", info=i)
    assert "self-check: nf4 subject: readouts drift 0.070" in to_markdown(session)
    assert "self-check: nf4 subject: readouts drift 0.070" in to_html(session)
    models = json.loads(to_json(session))["models"]
    assert models["quants"] == {"subject": "nf4", "av": "nf4", "ar": "nf4"} and models["fidelity_drifts"] is True


def test_the_drop_is_read_against_its_noise():
    noisy = report(fve_running=0.74, own_se=0.03, cross_se=0.01, explained=12)
    assert not noisy.subject_drifts and noisy.drop_se == 0.03  # the own drop is the larger one
    assert noisy.subject_verdict() == "nf4 subject: readouts within 0.02 fve of bf16 (+0.010 ± 0.030)"
    assert any("known to ±0.030" in line and "--positions 48" in line for line in noisy.table())
    assert not any("known to" in line for line in report(own_se=0.005).table())


def test_run_says_the_precision_and_the_verdict():
    from nla_tui.cli.run import precision_line

    assert precision_line(info()) == "precision: nf4; self-check: not run (nla-tui check --fidelity)"
    drifting = info(fidelity=report(fve_running=0.68).verdict(), fidelity_drifts=True)
    assert precision_line(drifting).endswith("— try --quant auto or --subject-quant bf16")
