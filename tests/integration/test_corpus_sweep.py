"""`nla-tui sweep` on the real demo pair: rows as `nla-tui run` gives them, resume after a
real kill -9, refusal to mix jobs, and search over what was explained."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from nla_tui.core.corpus import index
from nla_tui.core.corpus.shards import read_rows, shard_path
from tests._support_cli import cli_main as _main
from tests._support_engine import reusing_demo_loads

pytest.importorskip("pyarrow")  # the [corpus] extra; [test] installs it

CONVS = [
    {"id": "france", "messages": [{"role": "user", "content": "What is the capital of France?"},
                                  {"role": "assistant", "content": "Paris is the capital of France."}]},
    {"id": "fruit", "messages": [{"role": "user", "content": "Name a red fruit."},
                                 {"role": "assistant", "content": "A strawberry is red."}]},
    {"id": "sum", "messages": [{"role": "user", "content": "What is two plus two?"},
                               {"role": "assistant", "content": "Two plus two is four."}]},
]
FLAGS = ["--preset", "demo", "--role", "assistant", "--max-per-conversation", "2", "--max-explain-tokens", "12",
         "--shard-positions", "2", "--others", "3"]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "convs.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in CONVS[:2]))
    return path


@pytest.fixture(scope="module")
def swept(corpus_file, tmp_path_factory, demo_paths, demo_tokenizer, demo_engine):
    """Two conversations, two assistant positions each, two shards: run once, in-process."""
    out = tmp_path_factory.mktemp("sweep") / "out"
    from nla_tui import cli

    with reusing_demo_loads(demo_tokenizer, demo_paths, demo_engine, models=("subject", "av", "ar")):
        assert cli.main(["sweep", str(corpus_file), "--out", str(out), *FLAGS, "--save-activations"]) == 0
    return out


def test_rows_match_nla_tui_run(swept, tmp_path, capsys, demo_paths, demo_tokenizer, demo_engine):
    rows = [r for r in read_rows(swept) if r["conversation_id"] == "france"]
    assert len(rows) == 2 and all(r["role"] == "model" for r in rows)
    msgs = tmp_path / "france.json"
    msgs.write_text(json.dumps(CONVS[0]["messages"]))
    positions = ",".join(str(r["token_index"]) for r in rows)
    with reusing_demo_loads(demo_tokenizer, demo_paths, demo_engine, models=("subject", "av", "ar")):
        code, _, err = _main(capsys, "run", "--preset", "demo", "--messages", str(msgs), "--explain", positions,
                             "--max-explain-tokens", "12", "--out", str(tmp_path / "s"))
    assert code == 0, err[-2000:]
    session = json.loads((tmp_path / "s" / "session.json").read_text())
    by_index = {e["index"]: e for e in session["explanations"]}
    tokens = session["tokens"]
    for r in rows:
        e = by_index[r["token_index"]]
        assert r["explanation"] == e["text"] and r["truncated"] == e["truncated"]
        assert r["token_text"] == tokens[r["token_index"]]["text"]
        assert r["cos"] == pytest.approx(e["score"]["cos"], abs=1e-5)
        assert r["fve_nrm"] == pytest.approx(e["score"]["fve_nrm"], abs=1e-5)
        assert r["activation_norm"] == pytest.approx(tokens[r["token_index"]]["norm"], rel=1e-5)
        # the controls are there and mean what they say
        assert r["others"] == 3 and r["specificity"] == pytest.approx(r["fve_nrm"] - r["fve_others_mean"])
        assert r["prior_fve"] is not None and r["prior_fve"] < 1
        assert r["subject"] == "demo:subject" and r["precision"] == "fp32" and r["layer"] == 12


def test_rows_carry_the_panes_verdict(tmp_path, capsys, demo_paths, demo_tokenizer, demo_engine):
    """--role all reaches <bos>, turn markers and the first tokens: each row's verdict is
    core.caveats' for its position (never "good" where flagged), the one `nla-tui run`'s
    JSON export and the TUI's pane give, and search hits carry it."""
    from nla_tui.core.store.export import to_json
    from nla_tui.core.store.session import load_session

    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps(CONVS[0]) + "\n")
    out = tmp_path / "out"
    with reusing_demo_loads(demo_tokenizer, demo_paths, demo_engine, models=("subject", "av", "ar")):
        code, _, err = _main(capsys, "sweep", str(corpus), "--out", str(out), "--preset", "demo", "--role", "all",
                             "--max-per-conversation", "6", "--max-explain-tokens", "8", "--others", "0",
                             "--no-prior")
        assert code == 0, err[-2000:]
        rows = read_rows(out)
        msgs = tmp_path / "france.json"
        msgs.write_text(json.dumps(CONVS[0]["messages"]))
        code, _, err = _main(capsys, "run", "--preset", "demo", "--messages", str(msgs), "--explain",
                             ",".join(str(r["token_index"]) for r in rows), "--max-explain-tokens", "8",
                             "--out", str(tmp_path / "s"))
    assert code == 0, err[-2000:]
    doc = json.loads(to_json(load_session(tmp_path / "s")))
    verdicts = {e["index"]: e["verdict"] for e in doc["explanations"]}
    for r in rows:
        assert r["verdict"] == verdicts[r["token_index"]], r["token_index"]
        assert bool(r["caveats"]) == (str(r["token_index"]) in doc["position_warnings"])
        assert r["verdict"] == (r["label"] if not r["caveats"] or r["label"] != "good" else "unreliable")
    assert {"special", "early"} <= {k for r in rows for k in r["caveats"]}
    hits = index.search(out, "", sort="corpus", limit=50)
    assert [(h.token_index, h.verdict) for h in hits] == [(r["token_index"], r["verdict"]) for r in rows]


def test_activations_are_saved_beside_their_rows(swept):
    import numpy as np
    from safetensors.numpy import load_file

    for k in (0, 1):
        rows = [r for r in read_rows(swept) if r["shard"] == k]
        acts = load_file(str(shard_path(swept, k, "safetensors")))["activations"]
        assert acts.shape == (len(rows), 640)
        np.testing.assert_allclose(np.linalg.norm(acts, axis=1), [r["activation_norm"] for r in rows], rtol=1e-5)


def test_search_finds_what_was_explained_and_nothing_else(swept):
    import re

    def words(text: str) -> set[str]:  # as FTS5's unicode61 tokenizer splits (ASCII words)
        return {w for w in re.findall(r"[A-Za-z0-9]+", text.lower())}

    rows = read_rows(swept)
    word = max((w for r in rows for w in words(r["explanation"]) if w.isalpha()), key=lambda w: (len(w), w))
    expected = {(r["conversation_id"], r["token_index"]) for r in rows
                if word in words(r["explanation"]) | words(r["token_text"])}
    hits = index.search(swept, word, limit=100)
    assert {(h.conversation_id, h.token_index) for h in hits} == expected and expected
    assert index.search(swept, "zyzzyvaquux") == []
    assert index.search(swept, word, roles=("user",)) == []  # only assistant tokens were explained
    cut = sorted(r["fve_nrm"] for r in rows)[len(rows) // 2]
    assert all(h.fve_nrm >= cut for h in index.search(swept, word, min_fve=cut, limit=100))
    assert index.conversation_messages(swept, "fruit") == CONVS[1]["messages"]


def test_a_parked_wave_of_shards_gives_the_same_rows(swept, corpus_file, tmp_path, capsys, monkeypatch,
                                                     demo_paths, demo_tokenizer, demo_engine):
    """--wave-positions 4 puts both shards in one engine call and --park always parks the
    subject and AR for its AV passes (what a GPU too small for a full batch does): parked
    once for the whole wave, and the rows are the shard-at-a-time sweep's."""
    from nla_tui.core.models import parking

    parks = []
    real_park = parking.Parking.park

    def counting_park(self, models):
        parks.append(sorted(models))
        return real_park(self, models)

    monkeypatch.setattr(parking.Parking, "park", counting_park)
    out = tmp_path / "wave"
    with reusing_demo_loads(demo_tokenizer, demo_paths, demo_engine, models=("subject", "av", "ar")):
        code, _, err = _main(capsys, "sweep", str(corpus_file), "--out", str(out), *FLAGS, "--save-activations",
                             "--park", "always", "--wave-positions", "4")
    assert code == 0, err[-2000:]
    assert parks == [["ar", "subject"]]  # once, for two shards
    mine, theirs = read_rows(out), read_rows(swept)
    assert len(mine) == len(theirs) == 4 and sorted({r["shard"] for r in mine}) == [0, 1]
    for a, b in zip(mine, theirs):
        for k in ("conversation_id", "token_index", "explanation", "truncated", "shard", "others", "verdict"):
            assert a[k] == b[k], k
        for k in ("cos", "fve_nrm", "specificity", "prior_fve"):
            assert a[k] == pytest.approx(b[k], abs=1e-5), k


def test_progress_only_grows_across_a_wave_and_its_shard_writes(corpus_file, tmp_path, demo_engine):
    """run_sweep reports rows as the wave's AV passes finish, then once per shard written: the
    count never goes back (the CLI's bar and ETA are built on it) and ends at the total."""
    from nla_tui.core.corpus import plan as planning
    from nla_tui.core.corpus.reader import read_corpus
    from nla_tui.core.corpus.selection import make_selection
    from nla_tui.core.corpus.sweep import SweepOptions, run_sweep
    from nla_tui.core.types import Sampling

    selection = make_selection(role="assistant", max_per_conversation=2)
    plan = planning.make_plan(read_corpus(corpus_file), selection, demo_engine.subject.tok, None, "demo",
                              shard_positions=2)
    seen = []
    final = run_sweep(demo_engine, plan, tmp_path / "out", SweepOptions(selection, Sampling(max_new_tokens=6),
                                                                        batch_size=2, wave_positions=4),
                      on_progress=lambda p: seen.append((p.rows_done, p.shards_done)))
    rows = [r for r, _ in seen]
    assert len(plan.shards) == 2 and final.rows_done == final.rows_total == 4
    assert rows == sorted(rows) and rows[-1] == 4 and seen[-1][1] == 2
    assert (2, 0) in seen  # the first AV pass of the wave, before any shard was written


def test_dry_run_times_the_first_positions_and_writes_no_row(corpus_file, tmp_path, capsys, demo_paths,
                                                             demo_tokenizer, demo_engine):
    """--dry-run with the warm-up: explains the sweep's first positions (across shards) to
    time them, prints the estimate for the whole sweep, and writes nothing to --out; the
    engine it loads reserves the subject's KV for the corpus's longest conversation."""
    from nla_tui.core.models.conversation import tag_tokens
    from nla_tui.core.runtime.engine import Engine

    out = tmp_path / "dry"
    given = []
    real_init = Engine.__init__

    def recording_init(self, options, *a, **k):
        given.append(options)
        real_init(self, options, *a, **k)

    with reusing_demo_loads(demo_tokenizer, demo_paths, demo_engine, models=("subject", "av", "ar")):
        Engine.__init__ = recording_init
        try:
            code, _, err = _main(capsys, "sweep", str(corpus_file), "--out", str(out), *FLAGS, "--dry-run")
        finally:
            Engine.__init__ = real_init
    assert code == 0, err[-2000:]
    assert "warm-up: 4 positions at" in err and "for 4 positions" in err, err[-1000:]
    assert not (out / "shards").exists() and not (out / "manifest.json").exists()
    # the subject's KV reservation is the longest conversation's, not a chat's 4,096 tokens
    from nla_tui.core.corpus.reader import read_corpus

    longest = max(len(tag_tokens(demo_engine.subject.tok, c.messages)[0])
                  for c in read_corpus(corpus_file).conversations)
    assert [o.subject_context_tokens for o in given] == [longest] and longest < 100


def test_a_changed_option_refuses_to_mix(swept, corpus_file, capsys):
    code, _, err = _main(capsys, "sweep", str(corpus_file), "--out", str(swept),
                         *[("16" if f == "12" else f) for f in FLAGS], "--save-activations")
    assert code == 2 and "sampling.max_new_tokens: 12 → 16" in err, err
    assert len(read_rows(swept)) == 4  # untouched


def test_resume_after_kill_9(tmp_path, capsys, demo_paths, demo_tokenizer, demo_engine):
    """A real process killed with SIGKILL after its first shard; the same command again
    finishes without redoing that shard, with no duplicate and no missing row."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps(c) + "\n" for c in CONVS))
    out = tmp_path / "out"
    flags = ["--preset", "demo", "--role", "assistant", "--max-per-conversation", "1", "--max-explain-tokens", "8",
             "--shard-positions", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "nla_tui.cli", "sweep", str(corpus), "--out", str(out), *flags],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.monotonic() + 600
        while not shard_path(out, 0).exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    first = shard_path(out, 0).stat().st_mtime_ns
    assert not shard_path(out, 2).exists()  # killed mid-job
    with reusing_demo_loads(demo_tokenizer, demo_paths, demo_engine, models=("subject", "av", "ar")):
        code, _, err = _main(capsys, "sweep", str(corpus), "--out", str(out), *flags)
    assert code == 0, err[-2000:]
    assert "1 of 3 shards already done" in err or "2 of 3 shards already done" in err
    assert shard_path(out, 0).stat().st_mtime_ns == first  # not redone
    keys = [(r["conversation_id"], r["token_index"]) for r in read_rows(out)]
    assert len(keys) == len(set(keys)) == 3 and [k[0] for k in keys] == ["france", "fruit", "sum"]
    assert not list((out / "shards").glob(".*tmp"))  # no temp file left behind
    db = index.connect(out)
    assert db.execute("SELECT count(*), count(DISTINCT conversation_id) FROM rows").fetchone() == (3, 3)
    db.close()


def test_local_ray_gives_the_in_process_rows(swept, corpus_file, tmp_path, capsys, monkeypatch):
    """--ray on a local Ray (one engine actor, its own process loading the demo pair from
    disk): the same rows as the in-process sweep, written by the same shard writer."""
    ray = pytest.importorskip("ray")  # the [cluster] extra; [test] installs it
    # Ray kills workers when the whole machine passes 95 % memory; a shared CI box holding
    # other test processes gets there without this test being at fault.
    monkeypatch.setenv("RAY_memory_usage_threshold", "0.99")
    ray.init(num_cpus=2, object_store_memory=256 << 20, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "NLA_TUI_NO_CACHE": "1",
                                       "TOKENIZERS_PARALLELISM": "false"}})
    try:
        out = tmp_path / "ray"
        code, _, err = _main(capsys, "sweep", str(corpus_file), "--out", str(out), *FLAGS, "--save-activations",
                             "--ray", "--ray-actors", "1", "--wave-positions", "4")  # both shards in one call
    finally:
        ray.shutdown()
    if code != 0 and "running low on memory" in err:
        # The actor is a second process holding the demo pair (~4 GiB): on a machine shared
        # with other jobs Ray's memory monitor may kill it. That is the machine, not --ray.
        pytest.skip("Ray killed the engine actor: the machine ran low on memory (" + err.strip()[-200:] + ")")
    assert code == 0, err[-3000:]
    mine, theirs = read_rows(out), read_rows(swept)
    assert len(mine) == len(theirs) == 4
    for a, b in zip(mine, theirs):
        for k in ("conversation_id", "token_index", "token_text", "explanation", "truncated", "shard", "others"):
            assert a[k] == b[k], k
        for k in ("cos", "mse_nrm", "fve_nrm", "specificity", "prior_fve", "surprise", "activation_norm"):
            assert a[k] == pytest.approx(b[k], abs=1e-5), k
    assert [h.token_index for h in index.search(out, "capital OR fruit*", limit=50)] == \
        [h.token_index for h in index.search(swept, "capital OR fruit*", limit=50)]
