"""Pure pieces of the UI: strip layout, event folding, colours, transcript parsing."""

import json
import queue
from pathlib import Path

import pytest

from nla_tui.core import events as ev
from nla_tui.core.errors import InputError
from nla_tui.core.types import TRUNCATED_WARNING, Explanation, Message, Sampling, Score, TokenInfo
from nla_tui.ui.screens.dialogs import check_prompt, check_temperature
from nla_tui.ui.state import UiState
from nla_tui.core.store.transcript import load_transcript
from nla_tui.ui.widgets.colors import fidelity_t
from nla_tui.ui.widgets.explanation import render_token
from nla_tui.ui.widgets.strip_layout import GUTTER, display_text, layout_pending, layout_tokens
from tests._support_paths import DATA, REPO


def _tok(i, text, role="user", turn=0, norm=10.0):
    return TokenInfo(i, 100 + i, text, role, turn, norm)


def _roles(turn):
    return {-1: "bos", 0: "user", 1: "model"}.get(turn, "user")


def test_layout_breaks_turns_newlines_and_width():
    toks = [_tok(0, "<bos>", "bos", -1), _tok(1, "ab", turn=0), _tok(2, "c\n", turn=0),
            _tok(3, "d", turn=0), _tok(4, "x" * 5, "model", 1), _tok(5, "y" * 5, "model", 1)]
    lay = layout_tokens(toks, GUTTER + 8, True, _roles)
    # bos row; user row "ab c↵"; user row "d"; model row "xxxxx"; wrapped "yyyyy"
    assert [[c.index for c in r.cells] for r in lay.rows] == [[0], [1, 2], [3], [4], [5]]
    assert [r.tag for r in lay.rows] == ["bos", "user", "", "model", ""]
    assert lay.row_of == [0, 1, 1, 2, 3, 4]
    assert lay.rows[1].cells[1].text == "c↵" and lay.rows[1].cells[1].x == 2


def test_layout_hides_specials_and_reuses_empty_row():
    toks = [_tok(0, "<bos>", "bos", -1), _tok(1, "<start_of_turn>", "special", 0),
            _tok(2, "hi\n", "user", 0), _tok(3, "yo", "model", 1)]
    shown = layout_tokens(toks, 40, True, _roles)
    hidden = layout_tokens(toks, 40, False, _roles)
    assert hidden.visible == [2, 3] and hidden.row_of[:2] == [-1, -1]
    # "hi\n" ends its row; the next turn takes that empty row instead of leaving a gap
    assert [r.tag for r in shown.rows] == ["bos", "user", "model"]


def test_display_text_and_pending_wrap():
    assert display_text("a\tb\n") == "a⇥b↵" and display_text("") == "∅"
    rows = layout_pending("abcdefgh\nij", GUTTER + 4, False)
    assert [r.pending for r in rows] == ["abcd", "efgh", "↵", "ij"]
    assert rows[0].tag == "model" and rows[1].tag == ""


def test_state_folds_chat_and_explain_events():
    st = UiState()
    toks = [_tok(i, f"t{i}", norm=10.0 + i) for i in range(12)]
    st.apply(ev.ChatStarted(toks[:5]))
    st.apply(ev.ChatDelta("Hel"))
    st.apply(ev.ChatDelta("lo"))
    assert st.reply == "Hello" and len(st.tokens) == 5
    st.apply(ev.ConversationUpdated([Message("user", "x"), Message("assistant", "Hello")], toks))
    assert st.reply is None and len(st.tokens) == 12
    st.apply(ev.ExplainStarted(11))
    st.apply(ev.ExplainDelta(11, "a conc"))
    assert st.partial[11] == "a conc"
    ex = Explanation(11, "a concept", "<explanation>a concept</explanation>", Sampling(),
                     score=Score(0.9, 0.2, 0.5))
    st.apply(ev.ExplainDone(11, [ex]))
    assert st.best(11) is ex and 11 not in st.partial and st.explaining is None
    # a new conversation with a different token at 11 drops the stale explanation
    changed = toks[:11] + [_tok(11, "other")]
    changed[11].token_id = 999
    st.apply(ev.ConversationUpdated([], changed))
    assert st.best(11) is None


def _fold_until(st: UiState, events: "queue.Queue", done) -> list:
    """Apply a real worker's events to `st` until `done(event)`; returns the events."""
    seen = []
    while True:
        e = events.get(timeout=60)
        st.apply(e)
        seen.append(e)
        if done(e):
            return seen


def test_state_cancel_and_failure_clear_progress():
    """Folded from the events a real worker sends (the shared scheduler over a replay):
    a cancelled explain-all and chat, and a failed explain, leave no progress behind."""
    from tests._support_ui import ScriptedReplay

    ended = lambda kind: lambda e: isinstance(e, (ev.JobFinished, ev.JobFailed)) and e.kind is kind  # noqa: E731
    events: queue.Queue = queue.Queue()
    st = UiState()
    w = ScriptedReplay(DATA / "recorded_session", events.put, hold_after=2)
    w.start()
    try:
        _fold_until(st, events, ended(ev.JobKind.LOAD))
        w.submit(ev.ExplainAll(list(range(20, 30))))
        _fold_until(st, events, lambda e: isinstance(e, ev.ExplainAllProgress) and e.done == 2)
        assert st.all_progress is not None
        w.cancel_current()
        fin = _fold_until(st, events, ended(ev.JobKind.EXPLAIN_ALL))[-1]
        assert fin.cancelled and st.all_progress is None
        w.submit(ev.Chat("hi"))
        _fold_until(st, events, lambda e: isinstance(e, ev.ChatDelta))
        assert st.reply
        w.cancel_current()
        assert _fold_until(st, events, ended(ev.JobKind.CHAT))[-1].cancelled
        assert st.reply is None
        st.apply(ev.ExplainStarted(99))  # as if an explain had begun streaming
        w.submit(ev.Explain(99))  # the recorded session has no token 99
        failed = _fold_until(st, events, ended(ev.JobKind.EXPLAIN))[-1]
        assert isinstance(failed, ev.JobFailed) and "no explanation for token 99" in failed.message
        assert st.partial == {} and st.explaining is None
    finally:
        w.stop()


def test_noisy_positions_and_outliers():
    st = UiState()
    toks = [_tok(0, "<bos>", "bos", -1, norm=900.0)] + [_tok(i, "w", norm=10.0) for i in range(1, 30)]
    toks[20].norm = 80.0
    st.set_tokens(toks)
    assert "first 10" in st.caveats(3)[0].text
    assert st.caveats(15) == []
    assert "median" in st.caveats(20)[0].text
    assert [c.kind for c in st.caveats(0)] == ["special", "early", "outlier"]


def test_fidelity_mapping_puts_label_thresholds_at_thirds():
    assert fidelity_t(Score(0.0, 2.0, 0.3)) == pytest.approx(1 / 3)
    assert fidelity_t(Score(0.0, 2.0, 0.6)) == pytest.approx(2 / 3)
    assert fidelity_t(Score(0.9, 0.2, None)) == pytest.approx(2 / 3)
    assert fidelity_t(Score(-0.5, 3.0, -2.0)) == 0.0


def test_render_token_shows_score_warnings_and_untrained_label():
    st = UiState()
    st.set_tokens([_tok(i, f"w{i}") for i in range(12)])
    # The pane shows the warnings the explain path made (core/nla/explain.py), none of its own.
    ex = Explanation(11, "about towers", "raw", Sampling(), score=Score(0.95, 0.1, 0.8),
                     truncated=True, warnings=["CJK text in the output", TRUNCATED_WARNING], untrained_av=True)
    st.explanations[11] = [ex]
    text = render_token(st, 11).plain
    assert "about towers" in text and "good" in text and "fve_nrm 0.800" in text
    assert "CJK text in the output" in text and "closing </explanation>" in text
    assert "untrained AV" in text
    assert "first 10" in render_token(st, 2).plain


def test_transcript_loader(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]))
    assert load_transcript(p) == [Message("user", "hi"), Message("assistant", "yo")]
    p.write_text("[{")
    with pytest.raises(InputError, match="not valid JSON"):
        load_transcript(p)
    p.write_text(json.dumps([{"role": "robot", "content": "x"}]))
    with pytest.raises(InputError, match="message 0"):
        load_transcript(p)
    with pytest.raises(InputError, match="does not exist"):
        load_transcript(tmp_path / "missing.json")


def test_dialog_validators():
    assert check_prompt("What is <INJECT>?") is None
    assert "exactly once" in check_prompt("no slot here")
    assert "exactly once" in check_prompt("<INJECT><INJECT>")
    assert check_temperature("0.7") is None
    assert "not a number" in check_temperature("warm")
    assert "out of range" in check_temperature("5")


def test_docs_list_the_same_keys_as_the_help_screen():
    from pathlib import Path

    from nla_tui.ui.keys import keys_markdown

    doc = (REPO / "docs" / "TUI.md").read_text(encoding="utf-8")
    assert keys_markdown() in doc, "docs/TUI.md is out of date: paste keys_markdown() into it"


def test_color_system_override_reaches_the_console(monkeypatch):
    import textual.constants

    from nla_tui.ui.app import create_app
    from nla_tui.ui.terminal import apply_color_system

    # registered so monkeypatch puts the originals back after the test
    monkeypatch.setattr(textual.constants, "COLOR_SYSTEM", textual.constants.COLOR_SYSTEM)
    monkeypatch.setenv("TEXTUAL_COLOR_SYSTEM", "auto")
    from nla_tui.ui.options import UiOptions

    app = create_app(lambda emit: None, UiOptions(color_system="256"))
    assert app.console.color_system == "256"
    app = create_app(lambda emit: None, UiOptions(color_system="truecolor"))
    assert app.console.color_system == "truecolor"
    with pytest.raises(InputError, match="--color-system"):
        apply_color_system("millions")


def test_nla_tui_open_passes_no_mouse_and_builds_a_replay(monkeypatch, tmp_path):
    from nla_tui.cli import main
    from nla_tui.core.runtime.replay import ReplayWorker
    from nla_tui.core.runtime.worker import EngineWorker
    from nla_tui.ui import app as app_mod

    calls = {}

    def fake_run(self, **kw):
        calls.update(kw)
        calls["worker"] = self.worker_factory(lambda e: None)
        calls["engine_worker"] = self.engine_worker

    monkeypatch.setattr(app_mod.NlaApp, "run", fake_run)
    monkeypatch.setenv("NLA_TUI_DATA", str(tmp_path))
    session = DATA / "recorded_session"
    assert main(["open", str(session), "--no-mouse"]) == 0
    assert calls["mouse"] is False
    assert isinstance(calls["worker"], ReplayWorker) and calls["worker"].preload
    # L can load the session's models: the CLI hands the app an EngineWorker builder.
    from nla_tui.core.options import EngineOptions

    assert isinstance(calls["engine_worker"](EngineOptions(preset="demo"), lambda e: None), EngineWorker)


def test_load_failure_is_kept_and_shown_in_the_status_line():
    from nla_tui.ui.widgets.status import status_text

    st = UiState()
    st.apply(ev.LoadProgress("subject", 0.5, "loading"))
    assert "subject 50%" in status_text(st, 0.0, False).plain
    st.apply(ev.JobFailed(ev.JobKind.LOAD, "No weights at /x; run nla-tui check."))
    assert st.load_failed and "not loaded" in status_text(st, 0.0, False).plain


def test_progress_bar_is_fixed_width_with_half_cells():
    from nla_tui.ui.widgets.status import progress_bar

    assert progress_bar(0, 36, 10).plain == "━" * 10
    assert progress_bar(36, 36, 10).plain == "━" * 10
    assert progress_bar(1, 4, 10).plain == "━━╸━━━━━━━"
    assert len(progress_bar(10, 36).plain) == 30


def test_nla_tui_hands_the_app_the_demo_example_unless_a_transcript_is_given(monkeypatch, tmp_path):
    from nla_tui.cli import main
    from nla_tui.core.nla.presets import DEMO_EXAMPLE
    from nla_tui.core.store.transcript import load_transcript
    from nla_tui.ui import app as app_mod

    seen = []
    monkeypatch.setattr(app_mod.NlaApp, "run", lambda self, **kw: seen.append(self.options))
    monkeypatch.setenv("NLA_TUI_DATA", str(tmp_path))
    assert main(["--preset", "demo", "--no-mouse"]) == 0
    assert seen[-1].example == str(DEMO_EXAMPLE) and load_transcript(seen[-1].example)  # shipped, valid
    t = tmp_path / "t.json"
    t.write_text(json.dumps([{"role": "user", "content": "hi"}]))
    assert main(["--preset", "demo", "--no-mouse", "--messages", str(t)]) == 0
    assert getattr(seen[-1], "example", None) is None


def test_gpu_memory_of_every_card_comes_from_the_worker_event():
    from nla_tui.core.types import CardMemory, ModelInfo
    from nla_tui.ui.widgets.status import status_text

    st = UiState()
    st.apply(ev.ModelsReady(ModelInfo(preset=None, subject="s", av="a", ar="r", layer=3, quant="nf4",
                                      device="cuda", d_model=8, placement="subject cuda:0 · av cuda:1")))
    assert "GiB" not in status_text(st, 0.0, False).plain  # nothing until the worker reports
    st.apply(ev.GpuMemory([CardMemory(0, 3 << 30, 80 << 30), CardMemory(1, 21 << 29, 48 << 30)]))
    assert "GPU cuda:0 3.0/80 · cuda:1 10.5/48 GiB" in status_text(st, 0.0, False).plain
    st.apply(ev.GpuMemory([CardMemory(2, 1 << 29, 24 << 30)]))  # one card: the short form
    assert "GPU 0.5/24 GiB" in status_text(st, 0.0, False).plain
