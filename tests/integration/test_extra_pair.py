"""Several pairs, one token (issue 26 item 3) on the real demo pair: a second AV/AR pair
(a hub-layout copy of the demo pair's directories, its own label; tests/_support_pair.py)
loaded beside the main one explains exactly as that pair does when it runs alone; bad
--extra-pair arguments are refused before any model loads; the worker, a saved session and
the TUI carry its explanations.

Memory: the pair is attached to the shared demo engine (its subject serves both pairs) and
taken off again at the end of the module; "alone" is an Engine whose main pair is the
copy, built over the same loaded modules (the path is what is compared, not the loader)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from nla_tui.core.errors import NlaError
from nla_tui.core.options import EngineOptions, PairSpec
from nla_tui.core.pair_jobs import ExplainWithPair, PairExplainDelta, PairExplainDone, PairReady
from nla_tui.core.types import Sampling
from tests._support_engine import kept_engine_state, reusing_demo_loads
from tests._support_pair import copy_demo_pair
from tests._support_ui import async_test, wait_until

SAMPLING = Sampling(max_new_tokens=48)
HANG_GUARD = 900.0  # seconds; a hang guard on a loaded 2-core box, not a speed check


@pytest.fixture(scope="module")
def pair_dirs(demo_paths, tmp_path_factory):
    return copy_demo_pair(demo_paths, tmp_path_factory.mktemp("pair"), label="copy of the demo pair")


@pytest.fixture(scope="module")
def engine(demo_engine, demo_paths, demo_tokenizer, pair_dirs):
    """The demo engine with the copy attached as its extra pair (loaded from disk)."""
    with kept_engine_state(demo_engine):
        with reusing_demo_loads(demo_tokenizer, demo_paths):
            demo_engine.load_extra_pair(PairSpec(str(pair_dirs["av"]), str(pair_dirs["ar"]), "copy"))
        yield demo_engine
    demo_engine.pair = None  # kept_engine_state put it back already; said here for the reader


@pytest.fixture(scope="module")
def alone(engine, pair_dirs, demo_paths, demo_tokenizer):
    """An Engine whose main pair is the copy, over the same subject: the pair run alone."""
    import nla_tui.core.runtime.engine as engine_mod
    from nla_tui.core.runtime.engine import Engine

    modules = {str(pair_dirs["av"]): engine.pair.av.model, str(pair_dirs["ar"]): engine.pair.ar.model}
    alone = Engine(EngineOptions(preset="demo", av=str(pair_dirs["av"]), ar=str(pair_dirs["ar"]), device="cpu",
                                 quant="fp32"))
    with reusing_demo_loads(demo_tokenizer, demo_paths), pytest.MonkeyPatch.context() as mp:
        def load_model(ckpt, *args, **kwargs):
            return modules.get(str(ckpt.path)) or engine.subject.model
        mp.setattr(engine_mod, "load_model", load_model)
        alone.load()
    return alone


def test_the_extra_pair_explains_as_that_pair_alone(engine, alone):
    assert engine.pair.info.label == "copy" and engine.pair.info.layer == engine.info.layer
    assert alone.info.av == engine.pair.info.models.av and alone.info.ar == engine.pair.info.models.ar
    alone.set_conversation(list(engine.messages))
    assert [t.token_id for t in alone.tokens] == [t.token_id for t in engine.tokens]
    positions = [len(engine.tokens) - 4, len(engine.tokens) - 2, len(engine.tokens) - 1]
    mine = engine.explain_with_pair(positions, SAMPLING)
    theirs = alone.explain(positions, SAMPLING, batch_size=len(positions))
    assert [e.index for e in mine] == [e.index for e in theirs] == positions
    for a, b in zip(mine, theirs):
        assert a.text == b.text and a.raw == b.raw and a.warnings == b.warnings
        assert abs(a.score.cos - b.score.cos) <= 1e-5 and abs(a.score.fve_nrm - b.score.fve_nrm) <= 1e-5
    # kept apart from the main pair's explanations, per token
    assert sorted(engine.pair_explanations) == positions
    assert not any(x is e for e, i in zip(mine, positions) for x in engine.explanations.get(i, []))


def test_a_pair_at_another_layer_reads_the_subjects_residual_at_that_layer(engine):
    """The vectors an extra pair at layer 5 would read: the capture's every-layer residual
    (kept for the logit lens), which is what capturing layer 5 alone gives."""
    from dataclasses import replace

    from nla_tui.core.models.subject import Subject

    ids = [t.token_id for t in engine.tokens]
    at5 = Subject(engine.subject.model, engine.subject.tok, 5).capture(ids).activations
    saved = engine.pair.info.models
    try:
        engine.pair.info.models = replace(saved, layer=5)
        engine.residuals = None  # as after a cached capture: recaptured once for the lens
        got = engine.pair_vectors([2, len(ids) - 1])
    finally:
        engine.pair.info.models = saved
    np.testing.assert_array_equal(got, at5[[2, len(ids) - 1]])
    assert not np.array_equal(got, engine.activations[[2, len(ids) - 1]])


def test_the_worker_runs_the_pair_job_and_the_session_keeps_it(engine, tmp_path):
    from nla_tui.core.runtime.worker import EngineWorker
    from nla_tui.core.store.export import to_markdown
    from nla_tui.core.store.session import load_session, save_session, session_from_engine

    events = []
    worker = EngineWorker(engine, events.append).start()
    try:
        index = len(engine.tokens) - 3
        worker.submit(ExplainWithPair(index, sampling=SAMPLING))
        assert worker.wait_idle(HANG_GUARD)
    finally:
        worker.stop()
    kinds = [type(e).__name__ for e in events]
    assert isinstance(next(e for e in events if isinstance(e, PairReady)), PairReady)
    assert kinds.index("PairReady") > kinds.index("ModelsReady")
    deltas = [e for e in events if isinstance(e, PairExplainDelta)]
    done = [e for e in events if isinstance(e, PairExplainDone)]
    assert deltas and deltas[0].text == "" and len(done) == 1 and done[0].index == index
    assert not any(type(e).__name__ == "ExplainDone" for e in events)  # never the main pair's event
    session = session_from_engine(engine, "pair", [])
    assert session.extra_pair.label == "copy" and [e.index for e in session.pair_explanations] == [index]
    save_session(session, tmp_path / "s")
    again = load_session(tmp_path / "s")
    assert again.pair_explanations[0].to_json() == done[0].explanations[0].to_json()
    assert again.extra_pair.to_json() == engine.pair.info.to_json()
    assert "## Extra pair: copy" in to_markdown(again)


def test_no_extra_pair_is_a_one_line_error_naming_the_flag(demo_engine):
    from nla_tui.core.runtime.worker import EngineWorker

    demo_engine.pair = None  # an engine started without --extra-pair (put back after the test)
    events = []
    worker = EngineWorker(demo_engine, events.append).start()
    try:
        worker.submit(ExplainWithPair(1))
        assert worker.wait_idle(HANG_GUARD)
    finally:
        worker.stop()
    failed = [e for e in events if type(e).__name__ == "JobFailed"]
    assert len(failed) == 1 and "--extra-pair" in failed[0].message and "\n" not in failed[0].message


@pytest.fixture(scope="module")
def bad_pairs(demo_paths, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    return {"wide": copy_demo_pair(demo_paths, root / "wide", d_model=1024),
            "deep": copy_demo_pair(demo_paths, root / "deep", extraction_layer_index=30)}


@pytest.mark.parametrize("spec, says", [
    (lambda bad, demo: f"av={demo['av']}-nowhere,ar={demo['ar']}", "no such directory"),
    (lambda bad, demo: f"av={demo['av']},ar={demo['ar']}-nowhere", "no such directory"),
    (lambda bad, demo: "av={av},ar={ar}".format(**bad["wide"]), "d_model is 1024 but the subject's hidden size is 640"),
    (lambda bad, demo: "av={av},ar={ar}".format(**bad["deep"]), "reads layer 30, but the subject has layers 0..17"),
    (lambda bad, demo: f"av={demo['ar']},ar={demo['ar']}", "holds an AR checkpoint"),
    (lambda bad, demo: f"av={demo['subject']},ar={demo['ar']}", "nla_meta.yaml"),
])
def test_bad_extra_pair_arguments_are_refused_before_any_model_loads(bad_pairs, demo_paths, spec, says,
                                                                   monkeypatch, capsys):
    import nla_tui.core.models.loading as loading
    import nla_tui.core.runtime.engine as engine_mod
    from nla_tui.cli import main
    from nla_tui.core.options import parse_pair_spec
    from nla_tui.core.runtime.engine import Engine

    def no_load(*a, **k):
        raise AssertionError("a model was loaded before --extra-pair was checked")
    for mod in (loading, engine_mod):
        monkeypatch.setattr(mod, "load_model", no_load)
    arg = spec(bad_pairs, demo_paths)
    assert main(["run", "--preset", "demo", "--example", "--explain", "17", "--extra-pair", arg]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1, err
    # the engine checks the same before it loads anything (a script through the API)
    with pytest.raises(NlaError) as e:
        Engine(EngineOptions(preset="demo", device="cpu", quant="fp32", extra_pair=parse_pair_spec(arg))).load()
    assert says in str(e.value)


@async_test
async def test_the_pane_shows_both_pairs_on_the_real_engine(engine):
    """2 in the TUI over the real engine: the extra pair's explanation arrives and the pane
    shows it under its label, below the main pair's explanation of the same token."""
    from nla_tui.core.runtime.worker import EngineWorker
    from nla_tui.ui.app import create_app
    from nla_tui.ui.options import UiOptions

    app = create_app(lambda emit: EngineWorker(engine, emit), UiOptions())
    async with app.run_test(size=(140, 60)) as pilot:
        await wait_until(pilot, lambda: app.state.pair is not None and app.state.tokens
                         and app.state.queue_depth == 0, "models and the pair ready", HANG_GUARD)
        index = len(app.state.tokens) - 2
        app.strip.set_cursor(index)
        app.temperature = 0.0
        await pilot.press("e")
        await wait_until(pilot, lambda: app.state.best(index) is not None, "the main explanation", HANG_GUARD)
        await pilot.press("2")
        await wait_until(pilot, lambda: index in app.state.pair_explanations, "the pair's explanation", HANG_GUARD)
        await pilot.pause()
        body = str(app.pane.render())
        head, _, tail = body.partition("extra pair [copy · layer 12]")
        main, extra = app.state.best(index), app.state.pair_explanations[index][0]
        assert tail and f"cos {main.score.cos:.3f}" in head and f"cos {extra.score.cos:.3f}" in tail
        assert extra.text.strip()[:30] in tail
        # the same pair, the same token, greedy: the same words as the main pair (same weights)
        assert extra.text == main.text


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def test_a_sweep_runs_with_the_extra_pair_and_its_rows_name_it(engine, pair_dirs, demo_paths, demo_tokenizer,
                                                               tmp_path, capsys):
    """nla-tui sweep --pair extra --extra-pair av=…,ar=…: the sweep's AV and AR are the extra
    pair's, its rows name them, and each row's explanation is what the pair gives in the engine."""
    pytest.importorskip("pyarrow")
    import json

    import nla_tui.core.runtime.engine as engine_mod
    from nla_tui.core.corpus.shards import read_rows
    from nla_tui.core.types import Message
    from tests._support_cli import cli_main

    messages = [{"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "Paris is the capital of France."}]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"id": "france", "messages": messages}) + "\n")
    spec = f"av={pair_dirs['av']},ar={pair_dirs['ar']},label=copy"
    flags = ["--preset", "demo", "--role", "assistant", "--max-per-conversation", "2", "--max-explain-tokens",
             "12", "--others", "0", "--no-prior"]
    code, _, err = cli_main(capsys, "sweep", str(corpus), "--out", str(tmp_path / "x"), *flags, "--extra-pair", spec)
    assert code == 2 and "add --pair extra" in err
    code, _, err = cli_main(capsys, "sweep", str(corpus), "--out", str(tmp_path / "x"), *flags, "--pair", "extra")
    assert code == 2 and "--pair extra needs --extra-pair" in err
    modules = {str(pair_dirs["av"]): engine.pair.av.model, str(pair_dirs["ar"]): engine.pair.ar.model}
    with reusing_demo_loads(demo_tokenizer, demo_paths), pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine_mod, "load_model", lambda ckpt, *a, **k: modules.get(str(ckpt.path)) or engine.subject.model)
        code, _, err = cli_main(capsys, "sweep", str(corpus), "--out", str(tmp_path / "out"), *flags,
                                "--pair", "extra", "--extra-pair", spec)
    assert code == 0, err[-2000:]
    rows = read_rows(tmp_path / "out")
    assert len(rows) == 2 and {(r["av"], r["ar"], r["layer"]) for r in rows} == \
        {(str(pair_dirs["av"]), str(pair_dirs["ar"]), 12)}
    engine.set_conversation([Message(m["role"], m["content"]) for m in messages])
    mine = engine.explain_with_pair([r["token_index"] for r in rows], Sampling(max_new_tokens=12))
    for r, e in zip(rows, mine):
        assert r["explanation"] == e.text and r["cos"] == pytest.approx(e.score.cos, abs=1e-5)


def test_the_api_explains_with_the_extra_pair_as_the_pair_alone(engine, alone):
    """Nla.explain_with_pair (docs/API.md) over the engine holding the extra pair equals the
    pair run alone on the same conversation and positions."""
    from nla_tui.core.api import Nla

    nla = Nla(engine)
    try:
        assert nla.pair.label == "copy"
        conv = nla.capture(list(engine.messages))
        positions = [len(conv.tokens) - 3, len(conv.tokens) - 1]
        mine = nla.explain_with_pair(conv, positions, SAMPLING)
    finally:
        nla.close()
    alone.set_conversation(list(conv.messages))
    theirs = alone.explain(positions, SAMPLING, batch_size=len(positions))
    assert [(e.index, e.text) for e in mine] == [(e.index, e.text) for e in theirs]
    assert all(abs(a.score.cos - b.score.cos) <= 1e-5 for a, b in zip(mine, theirs))
