"""Export: Markdown table, JSON, and the HTML heat map driven in a real headless Chromium."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nla_tui.core.errors import InputError
from nla_tui.cli import build_parser
from nla_tui.core.store.export import (best_explanation, export_session,
                                 fidelity_colour, to_html, to_json, to_markdown)
from nla_tui.core.store.session import SCHEMA_VERSION, load_session, save_session
from tests._support_session import (REAL_SESSION, chromium_binary, chromium_flags, hsl_to_rgb, make_session,
                                    read_png)
from tests._support_paths import REPO



def test_markdown_has_the_conversation_and_one_row_per_token():
    s = make_session()
    md = to_markdown(s)
    assert "## Conversation" in md and "> Rayleigh *scattering*." in md
    rows = [ln for ln in md.splitlines() if re.match(r"^\| \d+ \|", ln)]
    assert len(rows) == len(s.tokens)
    for row in rows:  # pipes in token text or explanations must not add columns
        assert len(re.findall(r"(?<!\\)\|", row)) == 10, row  # nine columns, warnings last
    by_index = {int(r.split("|")[1]): r for r in rows}
    for e in s.explanations:
        best = best_explanation(s.explanations_for(e.index))
        assert best.text.split(" ")[0] in by_index[e.index]
        if best.score:
            assert f"{best.score.cos:.3f}" in by_index[e.index]
    assert "untrained" in md


def test_json_export_is_the_session_document():
    s = make_session()
    doc = json.loads(to_json(s))
    assert doc["schema_version"] == SCHEMA_VERSION and doc["name"] == s.name
    assert len(doc["tokens"]) == len(s.tokens) and doc["activations"] is None
    assert [e["text"] for e in doc["explanations"]] == [e.text for e in s.explanations]
    full = json.loads(to_json(s, include_activations=True))
    assert np.array_equal(np.array(full["activations"], np.float32), s.activations)


def test_html_is_self_contained_and_escapes_token_text():
    s = make_session()
    page = to_html(s)
    assert "default-src 'none'" in page  # the CSP forbids any fetch
    assert not re.search(r"(src|href)\s*=", page)
    assert "http://" not in page and "https://" not in page
    # "</script>" is a token text and in an explanation: it must not end a script element
    assert page.count("</script>") == 2
    assert len(re.findall(r'class="tok( special)?"', page)) == len(s.tokens)


def test_export_cli_writes_files_atomically(tmp_path, capsys):
    d = save_session(make_session(), tmp_path / "sess")
    parser = build_parser()
    for fmt in ("md", "json", "html"):
        out = tmp_path / f"out.{fmt}"
        args = parser.parse_args(["export", str(d), "--format", fmt, "--out", str(out)])
        assert args.func(args) == 0
        assert out.read_text() == export_session(make_session(), fmt).replace(
            make_session().updated, json.loads((d / "session.json").read_text())["updated"])
    args = parser.parse_args(["export", str(d), "-f", "md"])
    args.func(args)
    assert "| # | token |" in capsys.readouterr().out
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(InputError, match="Unknown export format"):
        export_session(make_session(), "pdf")
    with pytest.raises(InputError, match="No session"):
        args = parser.parse_args(["export", str(tmp_path / "nope")])
        args.func(args)


def test_nla_tui_export_command(tmp_path):
    """Through the real entry point (`python -m nla_tui.cli`)."""
    d = save_session(make_session(), tmp_path / "sess")
    out = subprocess.run([sys.executable, "-m", "nla_tui.cli", "export", str(d), "--format",
                          "html", "--out", str(tmp_path / "x.html")],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "x.html").read_text().startswith("<!DOCTYPE html>")


def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile{len(list(tmp_path.glob('profile*')))}"
    profile.mkdir()
    return subprocess.run([chromium_binary(), *chromium_flags(str(profile)), *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(chromium_binary() is None,
                    reason="chromium is not installed (Debian: apt-get install -y chromium)")
@pytest.mark.parametrize("which", ["real", "synthetic"])
def test_html_in_headless_chromium_click_shows_the_explanation(tmp_path, which):
    """`real`: a session recorded from the demo preset (tests/data/demo_real_session);
    `synthetic`: edge cases (</script> tokens, pipes, every fidelity band)."""
    s = load_session(REPO / REAL_SESSION) if which == "real" else make_session(n_tokens=15)
    page = tmp_path / "export.html"
    export_session(s, "html", page)
    target = next(e for e in s.explanations if e.score is not None and e.score.fve_nrm)
    i = target.index
    # A click simulated on load from the URL hash runs the page's real click handler.
    dom = _chromium(["--dump-dom", f"{page.as_uri()}#click={i}"], tmp_path).stdout
    detail = re.search(r'<aside id="detail">(.*?)</aside>', dom, re.S)
    assert detail, dom[-2000:]
    text = detail.group(1)
    assert f"Token {i}:" in text
    assert html.escape(target.text, quote=False) in text
    from nla_tui.core.caveats import position_caveats, verdict

    assert f"fve_nrm {target.score.fve_nrm:.3f}" in text and verdict(target.score, position_caveats(s.tokens, i)) in text
    assert 'class="tok sel"' in dom and f'data-selected="{i}"' in dom

    # An unexplained token (in `synthetic`, the one whose text is "</script>") works too.
    j = next(t.index for t in s.tokens if t.text == "</script>" or not s.explanations_for(t.index))
    dom = _chromium(["--dump-dom", f"{page.as_uri()}#click={j}"], tmp_path).stdout
    assert "Not explained yet." in dom and f"Token {j}:" in dom

    shot = tmp_path / f"{which}.png"  # never the tracked screenshots/: a test writes only its own files
    run = _chromium([f"--screenshot={shot}", "--window-size=1200,700", "--hide-scrollbars",
                     f"{page.as_uri()}#click={i}"], tmp_path)
    assert shot.is_file(), run.stderr[-2000:]
    pixels = read_png(shot)[..., :3].reshape(-1, 3).astype(int)
    # Every scored token's heat-map colour is on screen.
    for e in s.explanations:
        if e.score is None:
            continue
        f = best_explanation(s.explanations_for(e.index)).score.fidelity
        h = float(re.match(r"hsl\((\d+)", fidelity_colour(f)).group(1))
        want = np.array(hsl_to_rgb(h, 0.75, 0.72))
        near = np.abs(pixels - want).max(axis=1) <= 3
        assert near.sum() > 50, (e.index, f, want)
