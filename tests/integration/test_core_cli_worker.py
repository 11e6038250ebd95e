"""The headless command end to end, the worker thread, and import hygiene."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from nla_tui.core import events as ev
from nla_tui.core.types import Sampling
from tests._support_cli import cli_main as _main
from tests._support_engine import engine_sharing_models, reusing_demo_loads


def _run(*args, env=None, timeout=900):
    return subprocess.run([sys.executable, "-m", "nla_tui.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, timeout=timeout)


def test_run_writes_a_valid_session(demo_paths, tmp_path):
    # The real command in its own process: load, chat, explain, write (keep it that way).
    from nla_tui.core.store.session import load_session

    out = tmp_path / "s"
    r = _run("run", "--preset", "demo", "--prompt", "What is the capital of France?", "--max-new-tokens", "6",
             "--explain", "4,9", "--max-explain-tokens", "8", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    # The trained demo pair says what it is, never "untrained".
    assert "trained here" in r.stdout and "untrained" not in r.stdout and "session written" in r.stdout
    doc = json.loads((out / "session.json").read_text())
    assert doc["schema_version"] >= 1
    assert doc["models"]["layer"] == 12 and doc["models"]["quant"] == "fp32"
    assert "trained here" in doc["models"]["pair_note"] and not doc["models"]["untrained_av"]
    assert doc["conversation"][0] == {"role": "user", "content": "What is the capital of France?"}
    s = load_session(out)
    assert len(s.tokens) == s.activations.shape[0] and s.activations.shape[1] == 640
    assert all(t.norm > 0 for t in s.tokens)
    np.testing.assert_allclose([t.norm for t in s.tokens], np.linalg.norm(s.activations, axis=1), rtol=1e-5)
    assert sorted(e.index for e in s.explanations) == [4, 9]
    for e in s.explanations:
        assert e.raw and e.score is not None and e.sampling.max_new_tokens == 8
        assert e.score.fve_nrm is not None


def test_run_with_messages_file(tmp_path, demo_paths, demo_tokenizer, demo_engine, capsys):
    msgs = tmp_path / "m.json"
    msgs.write_text(json.dumps([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]))
    # In-process, Engine.load given the demo weights and tokenizer already in memory.
    with reusing_demo_loads(demo_tokenizer, demo_paths, demo_engine, models=("subject", "av", "ar")):
        code, out, err = _main(capsys, "run", "--preset", "demo", "--messages", str(msgs), "--explain", "none")
    assert code == 0, err[-2000:]
    assert "Hello" in out and " model " in out


def test_run_example_warns_like_the_tui_and_counts_rows(demo_paths, demo_tokenizer, demo_engine, capsys):
    """The README's first command: the shipped example, teacher-forced. <bos> is never
    called good, the table's warnings are the pane's, and the progress bar (rate, time
    left) moves per finished row; transformers' own bars stay quiet."""
    from nla_tui.core.nla.presets import DEMO_EXAMPLE
    from nla_tui.core.store.transcript import load_transcript

    with reusing_demo_loads(demo_tokenizer, demo_paths, demo_engine, models=("subject", "av", "ar")):
        code, out, err = _main(capsys, "run", "--preset", "demo", "--example", "--explain", "0,20-21",
                               "--max-explain-tokens", "24")
    assert code == 0, err[-2000:]
    example = load_transcript(str(DEMO_EXAMPLE))
    assert f"user: {example[0].content}" in out and "teacher-forced" in out  # the example, not a chat
    rows = {int(line.split()[0]): line for line in out.splitlines() if line[:4].strip().isdigit()}
    assert sorted(rows) == [0, 20, 21] and "tokens not explained are left out" in out
    assert "<bos>" in rows[0] and " good " not in rows[0] and "⚠" in rows[0]
    assert any(label in rows[20] for label in (" good ", " mediocre ", " poor "))  # an ordinary token
    warnings = out.split("Warnings", 1)[1]
    assert "token 0:" in warnings and "first 10 tokens" in warnings and "special tokens" in warnings
    bar = err.replace("\r", "\n")
    assert "explain:" in bar and "3/3" in bar and "row" in bar and "Loading weights" not in bar


@pytest.mark.parametrize("args, message", [
    (["run", "--preset", "demo", "--prompt", ""], "prompt is empty"),
    (["run", "--preset", "demo"], "--prompt TEXT, --messages FILE.json or --example"),
    (["run", "--preset", "demo", "--example", "--prompt", "hi"], "not --prompt and --example"),
    (["run", "--preset", "demo", "--example", "--explain", "9-3"], "runs backwards"),
    (["run", "--preset", "demo", "--messages", "/nonexistent.json"], "does not exist"),
    (["run", "--devices", "subject=9x", "--prompt", "hi"], "--devices takes"),
])
def test_bad_input_exit_2_without_traceback(args, message, capsys):
    code, _, err = _main(capsys, *args)
    assert code == 2 and message in err and "Traceback" not in err


def test_bad_messages_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a list"')
    code, _, err = _main(capsys, "run", "--preset", "demo", "--messages", str(bad))
    assert code == 2 and "not valid JSON" in err
    bad.write_text('[{"role": "robot", "content": "x"}]')
    code, _, err = _main(capsys, "run", "--preset", "demo", "--messages", str(bad))
    assert code == 2 and "unknown role" in err


class Collector:
    def __init__(self):
        self.events: list[ev.Event] = []
        self.cv = threading.Condition()

    def __call__(self, e):
        with self.cv:
            self.events.append(e)
            self.cv.notify_all()

    def wait_for(self, pred, timeout=600):
        with self.cv:
            assert self.cv.wait_for(lambda: any(pred(e) for e in self.events), timeout), \
                f"no matching event; got {[type(e).__name__ for e in self.events][-20:]}"
        return [e for e in self.events if pred(e)]

    def of(self, cls):
        return [e for e in self.events if isinstance(e, cls)]


def test_worker_runs_jobs_in_order_and_survives_errors(demo_engine):
    from nla_tui.core.runtime.worker import EngineWorker

    eng = engine_sharing_models(demo_engine)  # share the loaded models, own conversation
    col = Collector()
    w = EngineWorker(eng, col).start()
    try:
        col.wait_for(lambda e: isinstance(e, ev.ModelsReady))
        w.submit(ev.Chat("Name a fruit.", max_new_tokens=6))
        col.wait_for(lambda e: isinstance(e, ev.ConversationUpdated))
        assert col.of(ev.ChatStarted)[0].tokens[-1].text == "\n"  # the generation prompt is shown at once
        tokens = col.of(ev.ConversationUpdated)[-1].tokens
        assert len(tokens) == eng.activations.shape[0]
        # a bad job reports and the worker keeps going
        w.submit(ev.Explain(index=10_000))
        failed = col.wait_for(lambda e: isinstance(e, ev.JobFailed))
        assert "out of range" in failed[0].message
        s = Sampling(max_new_tokens=6)
        w.submit(ev.Explain(index=3, sampling=s))
        done = col.wait_for(lambda e: isinstance(e, ev.ExplainDone) and e.index == 3)
        assert done[0].explanations[0].score is not None and not done[0].cached
        # the logit lens comes with the cursor's explain, before the explanation (issue 23)
        lens = col.of(ev.LogitLens)
        assert [x.index for x in lens] == [3] and len(lens[0].layers) == len(eng.subject.decoder.layers)
        assert col.events.index(lens[0]) < col.events.index(done[0])
        # the same explain again is answered from the engine's results, not the AV
        calls = eng.counters["av_generate"]
        w.submit(ev.Explain(index=3, sampling=s))
        col.wait_for(lambda e: isinstance(e, ev.ExplainDone) and e.index == 3 and e.cached)
        assert eng.counters["av_generate"] == calls
        # explain-all reports progress and can be cancelled. Its first AV batch waits
        # until the cancel has landed, so "still running when Esc arrives" is certain.
        entered, gate, real = threading.Event(), threading.Event(), eng.explain_vectors

        def gated(*args, **kwargs):
            entered.set()
            assert gate.wait(600)
            return real(*args, **kwargs)

        eng.explain_vectors = gated
        done_before = {e.index for e in col.of(ev.ExplainDone)}
        w.submit(ev.ExplainAll(list(range(len(tokens))), Sampling(max_new_tokens=4)))
        assert entered.wait(600)
        assert col.of(ev.ExplainAllProgress)[-1].done == 0
        w.cancel_current()
        gate.set()
        fin = col.wait_for(lambda e: isinstance(e, ev.JobFinished) and e.kind is ev.JobKind.EXPLAIN_ALL)
        assert fin[0].cancelled
        assert {e.index for e in col.of(ev.ExplainDone)} == done_before  # nothing explained after Esc
        assert w.wait_idle(60)
        # Progress moves per finished row, with a time left from the first one: rows that
        # close their explanation count before their batch is handed back.
        eng.explain_vectors = real
        start = len(col.events)
        w.submit(ev.ExplainAll([4, 5, 6], Sampling(max_new_tokens=64)))
        col.wait_for(lambda e: isinstance(e, ev.JobFinished) and e.kind is ev.JobKind.EXPLAIN_ALL
                     and col.events.index(e) >= start)
        run = col.events[start:]
        moves = [(k, e) for k, e in enumerate(run) if isinstance(e, ev.ExplainAllProgress)]
        first_done = next(k for k, e in enumerate(run) if isinstance(e, ev.ExplainDone))
        mid = [(k, e) for k, e in moves if 0 < e.done < 3]
        assert mid and mid[0][0] < first_done and mid[0][1].eta_s is not None
        assert [e.done for _, e in moves] == sorted(e.done for _, e in moves) and moves[-1][1].done == 3
    finally:
        w.stop()


@pytest.mark.parametrize("module, forbidden", [
    ("nla_tui.core.runtime.engine", ("textual", "rich")),
    ("nla_tui.core.runtime.worker", ("textual", "rich")),
    ("nla_tui.cli", ("torch", "textual")),
])
def test_import_hygiene(module, forbidden):
    code = (f"import sys, {module}; bad = [m for m in {forbidden!r} if m in sys.modules]; "
            f"print(','.join(bad)); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{module} imported {r.stdout.strip()} {r.stderr[-500:]}"
