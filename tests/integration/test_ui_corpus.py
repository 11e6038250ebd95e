"""The corpus screen (C) on the REAL demo engine: search a sweep's output, sort, open a hit
as a conversation with the cursor on its token and the sweep's explanation in the pane."""

from __future__ import annotations

from nla_tui.ui.options import UiOptions

import pytest
from textual.widgets import DataTable

from nla_tui.core.runtime.worker import EngineWorker
from nla_tui.ui.app import create_app
from nla_tui.ui.screens.corpus import CorpusScreen
from tests._support_corpus import FRANCE, row, write_sweep
from tests._support_ui import async_test, wait_until

pytest.importorskip("pyarrow")  # the [corpus] extra; [test] installs it
HANG_GUARD = 600.0


@pytest.fixture
def sweep(tmp_path, demo_tokenizer):
    """Rows on the real tokens of FRANCE (as the demo subject tokenizes it)."""
    from nla_tui.core.models.conversation import tag_tokens
    from nla_tui.core.types import Message

    ids, roles, _ = tag_tokens(demo_tokenizer, [Message.from_json(m) for m in FRANCE])
    model = [i for i, r in enumerate(roles) if r == "model"]
    text = lambda i: demo_tokenizer.decode([ids[i]])  # noqa: E731
    rows = [row(conversation_id="france", token_index=model[0], token_text=text(model[0]),
                explanation="The capital of France, named", fve_nrm=0.4, specificity=0.7, prior_fve=0.02),
            row(conversation_id="france", token_index=model[1], token_text=text(model[1]),
                explanation="A verb after the capital's name", fve_nrm=0.8, specificity=0.1)]
    return write_sweep(tmp_path / "sweep", [rows]), rows


@async_test
async def test_search_sort_and_open_a_hit_on_its_token(demo_engine, sweep):
    out, rows = sweep
    app = create_app(lambda emit: EngineWorker(demo_engine, emit), UiOptions())
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_until(pilot, lambda: app.state.info is not None, "models ready", HANG_GUARD)
        app.strip.focus()
        await pilot.press("C")
        await pilot.press(*str(out), "enter")
        await wait_until(pilot, lambda: isinstance(app.screen, CorpusScreen), "the corpus screen")
        screen = app.screen
        assert [h.token_index for h in screen.hits] == [rows[1]["token_index"], rows[0]["token_index"]]  # by fve
        table = screen.query_one(DataTable)  # the verdict column: core.caveats' verdict the sweep stored
        assert [str(c.label) for c in table.columns.values()][3:5] == ["fve", "verdict"]
        assert table.get_row_at(0)[4] == rows[1]["verdict"] == "mediocre"
        await pilot.press(*"capital", "enter")  # both match; Enter moves to the table
        await pilot.press("s")  # by specificity
        assert [h.token_index for h in screen.hits] == [rows[0]["token_index"], rows[1]["token_index"]]
        await pilot.press("enter")
        target = rows[0]["token_index"]
        await wait_until(pilot, lambda: app.state.tokens and app.strip.cursor == target, "the hit's token",
                         HANG_GUARD)
        assert [m.content for m in app.state.messages] == [m["content"] for m in FRANCE]
        best = app.state.best(target)
        assert best.text == "The capital of France, named" and best.controls["specificity"] == pytest.approx(0.7)
        pane = app.pane.text.plain
        assert "The capital of France, named" in pane and "specificity +0.70 (vs 3 others)" in pane
