"""Property test: random mutations of a real session.json / activations file and of a
real sidecar, fed to `open`, `export` and `check`. Whatever the bytes, each command
exits 0 or exits 2 with a one-paragraph message — never a traceback — and every input
file is byte-identical afterwards. When it exits 0, what it printed is strict JSON
(json export) and holds no raw control character.

Derandomized (the same cases every run, so a failure reproduces); the counts are in
docs/RELIABILITY.md. `cli.main` runs in-process: an exception other than the
documented NlaError escapes it and fails the test with its traceback.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nla_tui import cli
from tests._support_session import BRANCH_SESSION, REAL_SESSION
from tests._support_paths import REPO

SESSION_CASES = 240
SIDECAR_CASES = 40
TRANSCRIPT_CASES = 120
VECTOR_CASES = 60
# Four real sessions, so every field of the schema has a node to damage: the demo
# chat, the recorded session with a steered continuation (`steered`), an agent transcript
# with `tool_calls`, a tool result and a system prompt, and that transcript with its tool
# result edited (`branches`, `current_branch`).
SESSIONS = (REAL_SESSION, "tests/data/recorded_session", "tests/data/agent_session", BRANCH_SESSION)
OUTCOMES: Counter = Counter()  # read by docs/RELIABILITY.md's numbers (printed with -s)

leaf = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70),
                 st.floats(allow_nan=True, allow_infinity=True),
                 st.text(max_size=12), st.sampled_from(["\x1b]0;T\x07\x1b[2J", "<!--", "</script>", "{0}", ""]))
json_value = st.recursive(leaf, lambda c: st.one_of(st.lists(c, max_size=3),
                                                    st.dictionaries(st.text(max_size=6), c, max_size=3)),
                          max_leaves=8)


def mutate_tree(data, doc):
    """Replace, delete or retype one node anywhere in a parsed document."""
    node, parent, key = doc, None, None
    while isinstance(node, (dict, list)) and node and data.draw(st.booleans(), label="descend"):
        keys = list(node.keys()) if isinstance(node, dict) else list(range(len(node)))
        parent, key = node, data.draw(st.sampled_from(keys), label="key")
        node = node[key]
    if parent is None:
        return data.draw(json_value, label="new root")
    if data.draw(st.booleans(), label="delete?"):
        del parent[key]
    else:
        parent[key] = data.draw(json_value, label="new value")
    return doc


def mutate_bytes(data, raw: bytes) -> bytes:
    op = data.draw(st.sampled_from(["truncate", "flip", "insert"]), label="byte op")
    pos = data.draw(st.integers(0, max(len(raw) - 1, 0)), label="pos")
    if op == "truncate":
        return raw[:pos]
    if op == "flip":
        return raw[:pos] + bytes([raw[pos] ^ data.draw(st.integers(1, 255), label="mask")]) + raw[pos + 1:]
    return raw[:pos] + data.draw(st.binary(min_size=1, max_size=8), label="junk") + raw[pos:]


def snapshot(root: Path) -> dict[str, object]:
    """Regular files by content; symlinked weights by target, size and mtime."""
    out: dict[str, object] = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            st_ = p.stat()
            out[str(p)] = (str(p.resolve()), st_.st_size, st_.st_mtime_ns)
        elif p.is_file():
            out[str(p)] = p.read_bytes()
    return out


def run_cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def assert_outcome(code: int, out: str, err: str, what: str) -> None:
    OUTCOMES[(what, code)] += 1
    assert code in (0, 2), (what, code, err)
    if code == 2:
        assert err.startswith("nla-tui: ") and len(err.strip()) > 20 and "Traceback" not in err, err
    for ch in "\x1b\x07\x9b":
        assert ch not in out and ch not in err, (what, repr(out[:200]), repr(err[:200]))


@pytest.fixture(scope="module", autouse=True)
def _report_outcomes():
    """With -s, print how the cases ended (the counts in docs/RELIABILITY.md)."""
    yield
    print("\nfuzz outcomes (command, exit code): cases", dict(sorted(OUTCOMES.items())))


FUZZ = settings(max_examples=SESSION_CASES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


@FUZZ
@given(data=st.data())
def test_mutated_sessions_never_traceback_and_are_never_changed(data):
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "s"
        shutil.copytree(REPO / data.draw(st.sampled_from(SESSIONS), label="session"), d)
        target = data.draw(st.sampled_from(["tree", "bytes", "activations"]), label="target")
        jpath = d / "session.json"
        if target == "tree":
            doc = mutate_tree(data, json.loads(jpath.read_text()))
            jpath.write_text(json.dumps(doc))  # NaN / Infinity written bare, as Python does
        elif target == "bytes":
            jpath.write_bytes(mutate_bytes(data, jpath.read_bytes()))
        else:
            acts = next(d.glob("activations*.safetensors"))
            acts.write_bytes(mutate_bytes(data, acts.read_bytes()))
        before = snapshot(d)
        for fmt in ("md", "json", "html"):
            code, out, err = run_cli("export", str(d), "--format", fmt)
            assert_outcome(code, out, err, f"export {fmt}")
            if code == 0 and fmt == "json":
                json.loads(out, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
        with mock.patch("nla_tui.ui.launch.run_app", return_value=0):
            code, out, err = run_cli("open", str(d))
        assert_outcome(code, out, err, "open")
        assert snapshot(d) == before


from nla_tui.core.models.loading import load_tokenizer as _real_load_tokenizer  # noqa: E402 (before any patch)


@functools.lru_cache(maxsize=4)
def _tokenizer(real_dir: str):
    from nla_tui.core.models.loading import resolve_checkpoint

    return _real_load_tokenizer(resolve_checkpoint(real_dir))


def _cached_tokenizer(ckpt):
    # The tokenizer files are symlinks to the real demo's: load each real one once.
    return _tokenizer(str((ckpt.path / "tokenizer.json").resolve().parent))


@settings(FUZZ, max_examples=SIDECAR_CASES)
@given(data=st.data())
def test_mutated_sidecars_never_traceback_and_are_never_changed(demo_paths, data):
    role = data.draw(st.sampled_from(["av", "ar"]), label="role")
    with tempfile.TemporaryDirectory() as tmp:
        ck = Path(tmp) / role
        ck.mkdir()
        for f in demo_paths[role].iterdir():
            if f.name == "nla_meta.yaml":
                shutil.copy(f, ck / f.name)
            else:
                (ck / f.name).symlink_to(f)
        meta = ck / "nla_meta.yaml"
        if data.draw(st.booleans(), label="tree?"):
            doc = mutate_tree(data, yaml.safe_load(meta.read_text()))
            meta.write_text(yaml.safe_dump(doc, allow_unicode=True))
        else:
            meta.write_bytes(mutate_bytes(data, meta.read_bytes()))
        before = snapshot(ck)
        with mock.patch("nla_tui.core.models.loading.load_tokenizer", _cached_tokenizer):
            code, out, err = run_cli("check", "--preset", "demo", f"--{role}", str(ck))
        assert_outcome(code, out, err, "check")
        assert snapshot(ck) == before


@settings(FUZZ, max_examples=TRANSCRIPT_CASES)
@given(data=st.data())
def test_mutated_transcripts_are_messages_or_one_clear_error(data):
    """The agent transcript (system, user, assistant with tool_calls, tool results), its
    tree or bytes damaged, read as JSON and as JSONL: a list of messages that can be
    shown, or an InputError, never another exception."""
    from nla_tui.core.errors import InputError
    from nla_tui.core.store.transcript import control_marker_warning, load_transcript, message_display_text

    src = json.loads((REPO / "tests/data/agent_transcript.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "t.json"
        target = data.draw(st.sampled_from(["tree", "bytes", "jsonl"]), label="target")
        if target == "tree":
            f.write_text(json.dumps(mutate_tree(data, src)))
        elif target == "bytes":
            f.write_bytes(mutate_bytes(data, json.dumps(src, ensure_ascii=False).encode()))
        else:
            msgs = src["messages"] if isinstance(src, dict) else src
            f.write_bytes(mutate_bytes(data, "\n".join(json.dumps(m, ensure_ascii=False) for m in msgs).encode()))
        try:
            messages = load_transcript(f)
        except InputError as e:
            OUTCOMES[("transcript", 2)] += 1
            assert len(str(e)) < 2000
            return
        OUTCOMES[("transcript", 0)] += 1
        for m in messages:
            assert isinstance(m.role, str) and isinstance(m.content, str)
            message_display_text(m)
        control_marker_warning(messages)


@settings(FUZZ, max_examples=VECTOR_CASES)
@given(data=st.data())
def test_mutated_vector_files_are_rows_or_one_clear_error(data):
    """A real .npy and .safetensors of vectors, bytes damaged: `explain-vectors`' readers
    give finite float32 rows of the AV's width, or an NlaError before any model loads."""
    import numpy as np
    from safetensors.numpy import save as st_save

    from nla_tui.core.errors import NlaError
    from nla_tui.core.nla.vectors import check_rows, load_vectors

    rows = np.random.default_rng(0).standard_normal((3, 640)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        kind = data.draw(st.sampled_from(["npy", "safetensors"]), label="kind")
        f = Path(tmp) / f"v.{kind}"
        if kind == "npy":
            buf = io.BytesIO()
            np.save(buf, rows)
            raw = buf.getvalue()
        else:
            raw = st_save({"v": rows})
        f.write_bytes(mutate_bytes(data, raw))
        try:
            got = check_rows(load_vectors(f), 640)
        except NlaError as e:
            OUTCOMES[("vectors", 2)] += 1
            assert len(str(e)) < 2000
            return
        OUTCOMES[("vectors", 0)] += 1
        assert got.dtype == np.float32 and got.shape[1] == 640 and np.isfinite(got).all()
