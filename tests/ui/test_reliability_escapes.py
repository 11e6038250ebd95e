"""Issue 19, items 1, 2 and 14: text from files is shown, never obeyed.

Every string field of a real recorded session (conversation, tokens, explanations,
steered continuations, model info, names) gets an escape sequence and Textual markup
appended, by walking the JSON document, so a field added later is covered too. Then:
the TUI runs as its own process in a real pty (`nla-tui open`, the session browser,
the token pane) and the raw bytes it writes are counted; the CLI's printers write to
a real stdout; and a structural check fails if a CLI module prints other than through
`cli.output.say`.
"""

from __future__ import annotations

import ast
import fcntl
import json
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from nla_tui.core.steer_results import SteerResult
from nla_tui.core.store.export import to_markdown
from nla_tui.core.store.session import load_session, save_session
from nla_tui.core.types import Candidate, Explanation, Sampling, Score

from tests._support_ui import RECORDED, async_test, replay_app, settle_replay, wait_until
from tests._support_reliability import main
from tests._support_paths import REPO

ESC = "\x1b]0;PWNED\x07\x1b[2J"
MARKUP = " [/tmp/x] [red] tag"
RAW = (b"\x1b]0;PWNED", b"\x1b[2J\x1b]", b"PWNED\x07")  # the injected sequences, as a terminal would obey them
NOT_TEXT = {"activations_file", "activations_sha256", "schema_version", "span"}  # span: here | onward


def poison(node, key=None):
    """Every string leaf with ESC and markup appended (what a hostile file holds)."""
    if isinstance(node, dict):
        return {k: poison(v, k) for k, v in node.items()}
    if isinstance(node, list):
        return [poison(v, key) for v in node]
    if isinstance(node, str) and key not in NOT_TEXT:
        return node + ESC + MARKUP
    return node


def hostile_session(root: Path, name: str = "hostile") -> Path:
    d = root / name
    shutil.copytree(RECORDED, d)
    doc = json.loads((d / "session.json").read_text())
    (d / "session.json").write_text(json.dumps(poison(doc), ensure_ascii=False))
    return d


def raw_count(data: bytes) -> int:
    return sum(data.count(seq) for seq in RAW)


def run_in_pty(argv: list[str], env: dict, keys: list[str], rows: int = 36, cols: int = 120) -> tuple[int, bytes]:
    """Run nla-tui in a real pseudo-terminal, send `keys` one by one once the screen is
    quiet, and return its exit code and every byte it wrote to the terminal."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "nla_tui.cli", *argv], stdin=slave, stdout=slave, stderr=slave,
                            cwd=REPO, env=env, start_new_session=True, close_fds=True)
    os.close(slave)
    out = bytearray()

    def read_until_quiet(quiet: float, limit: float) -> None:
        end, last = time.monotonic() + limit, time.monotonic()
        while time.monotonic() < end and time.monotonic() - last < quiet:
            r, _, _ = select.select([master], [], [], 0.1)
            if r:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the process closed the terminal
                    return
                if not chunk:
                    return
                out.extend(chunk)
                last = time.monotonic()

    try:
        read_until_quiet(quiet=3.0, limit=60)  # started and drawn
        for k in keys:
            os.write(master, k.encode())
            read_until_quiet(quiet=1.5, limit=20)
        proc.wait(timeout=30)
        read_until_quiet(quiet=0.5, limit=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return proc.returncode, bytes(out)


def test_1_2_tui_in_a_pty_writes_no_escape_from_any_session_field(tmp_path):
    data = tmp_path / "d[/x]"  # NLA_TUI_DATA with markup in it (item 2)
    sessions = data / "sessions"
    hostile = hostile_session(sessions)
    for name in ("notes [/tmp/x]", "layer [red] test"):
        s = load_session(RECORDED)
        s.name = name
        s.info.preset = "demo" + ESC
        save_session(s, sessions / name.split()[0])
    env = dict(os.environ, NLA_TUI_DATA=str(data), TERM="xterm-256color", COLUMNS="120", LINES="36")
    # right arrows move the token pane over poisoned tokens; ctrl+o lists every session;
    # escape closes it; ctrl+q quits (saving the open session on the way out).
    code, out = run_in_pty(["open", str(hostile)], env, ["\x1b[C", "\x1b[C", "\x0f", "\x1b", "\x11"])
    text = out.decode("utf-8", "replace")
    assert "Traceback" not in text and "MarkupError" not in text, text[-3000:]
    assert code == 0
    assert raw_count(out) == 0, _debug_context(out)
    assert "␛]0;PWNED␇" in text  # drawn, as visible characters
    assert "layer [red] test" in text and "notes [/tmp/x]" in text  # names literally, tags kept


@async_test
async def test_2_markup_in_names_is_shown_literally_and_such_a_session_can_be_deleted(tmp_path, monkeypatch):
    from nla_tui.ui.screens.sessions import ConfirmDialog, SessionBrowser

    data = tmp_path / "d[/x]"
    monkeypatch.setenv("NLA_TUI_DATA", str(data))
    for name in ("notes [/tmp/x]", "layer [red] test"):
        s = load_session(RECORDED)
        s.name = name
        save_session(s, data / "sessions" / name.split()[0])
    app = replay_app(preload=True)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle_replay(pilot, app)
        await pilot.press("ctrl+o")
        browser = app.screen
        assert isinstance(browser, SessionBrowser)
        names = [browser.table.get_row_at(i)[0].plain for i in range(len(browser.rows))]
        assert sorted(names) == ["layer [red] test", "notes [/tmp/x]"]
        assert "d[/x]" in str(browser.query_one("#sessions-title").render())
        browser.table.move_cursor(row=names.index("notes [/tmp/x]"))
        await pilot.press("d")
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("y")
        await wait_until(pilot, lambda: not (data / "sessions" / "notes").exists(), "the deletion")
        assert [s.name for s in browser.rows] == ["layer [red] test"]


def test_1_cli_printers_write_no_escape_to_stdout(tmp_path, capsys):
    """export (md, html, json) of a session with every field poisoned, and the printers of
    steer and explain-vectors, write to a real stdout: no raw sequence."""
    from nla_tui.cli.explain_vectors import print_rows
    from nla_tui.cli.steer import print_steered

    d = hostile_session(tmp_path)
    for fmt in ("md", "html", "json"):
        code, out, err = main(capsys, "export", str(d), "--format", fmt)
        assert code == 0, err
        assert raw_count(out.encode()) == 0 and "\x1b" not in out, fmt
        assert "PWNED" in out
    result = load_session(d).steered[0]
    print_steered(result)
    exp = Explanation(0, "vector" + ESC, "raw" + ESC, Sampling(), score=Score(0.5, 1.0, None))
    print_rows([exp], [1.0])
    out = capsys.readouterr().out
    assert "\x1b" not in out and out.count("␛]0;PWNED␇") >= 3  # steered texts and the vector row


def test_14_markdown_export_has_no_tag_link_image_or_entity_anywhere(tmp_path):
    evil = "<script>alert(1)</script><img src=x onerror=alert(1)> [x](javascript:alert(1)) ![](https://remote/pixel.png) &amp;"
    s = load_session(RECORDED)
    s.messages[0].content = evil
    s.explanations[0].text = evil
    s.steered.append(SteerResult(index=s.steered[0].index, token_text="<b>", layer=6, original_explanation=evil,
                                   edited_explanation=evil, alpha=0.5, span="here", vector_norm=1.0,
                                   before=[Candidate(1, evil, 0.5)], after=[Candidate(2, evil, 0.4)],
                                   original_tokens=[evil], steered_tokens=["x", evil]))
    md = to_markdown(s)
    active = re.sub(r"\\.", "", md)  # what a Markdown viewer acts on: escaped characters are text
    for bad in ("<script", "<img", "](javascript:", "![](", "&amp;"):
        assert bad not in active, bad
    assert md.count("\\<script\\>alert(1)\\</script\\>") >= 5  # every place shows it as text


def test_1_cli_modules_print_only_through_say():
    """Structural: a CLI module that calls print() or writes to sys.stdout/stderr itself
    could print a file's escape raw; `say` is the one way out."""
    offenders = []
    for path in sorted((REPO / "nla_tui" / "cli").glob("*.py")):
        if path.name in ("output.py", "progress_line.py"):  # progress_line: its own \r redraw, text made visible
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                if isinstance(f, ast.Name) and f.id == "print":
                    offenders.append(f"{path.name}:{node.lineno} print()")
                if isinstance(f, ast.Attribute) and f.attr == "write" and isinstance(f.value, ast.Attribute) \
                        and f.value.attr in ("stdout", "stderr"):
                    offenders.append(f"{path.name}:{node.lineno} sys.{f.value.attr}.write()")
    assert offenders == []


def _debug_context(out: bytes) -> list[bytes]:
    return [out[max(0, i - 120): i + 40] for i in range(len(out)) if out.startswith(RAW[0], i)]
