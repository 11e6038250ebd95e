"""Issue 23 item 4: the logit lens beside the AV (core/models/lens.py), on the real demo
subject (Gemma 3 270M, fp32 on CPU)."""

import numpy as np

from nla_tui.core import events as ev
from nla_tui.core.runtime.engine_caches import EngineCaches
from nla_tui.ui.state import UiState
from nla_tui.ui.widgets.explanation import render_token
from nla_tui.ui.widgets.strip_layout import display_text


def test_the_lens_last_layer_is_the_subjects_own_next_token_distribution(demo_engine):
    eng = demo_engine
    n_layers = len(eng.subject.decoder.layers)
    assert eng.residuals is not None and eng.residuals.shape == (len(eng.tokens), n_layers, eng.info.d_model)
    # the AV's vector is the lens's layer K: one capture, read two ways
    np.testing.assert_array_equal(eng.residuals[:, eng.info.layer], eng.activations)
    for i in (3, len(eng.tokens) - 1):
        lens = eng.logit_lens(i)
        assert len(lens) == n_layers and all(len(top) == 3 for top in lens)
        own = eng.tokens[i].top[:3]
        assert [c.token_id for c in lens[-1]] == [c.token_id for c in own]
        np.testing.assert_allclose([c.prob for c in lens[-1]], [c.prob for c in own], atol=1e-4)
        # an early layer is not the final answer: the lens shows the prediction forming
        assert [c.token_id for c in lens[0]] != [c.token_id for c in own]
    ui = UiState(info=eng.info, tokens=eng.tokens)
    ui.apply(ev.LogitLens(3, eng.logit_lens(3)))
    pane = render_token(ui, 3).plain
    assert "logit lens" in pane and f"L{eng.info.layer}" in pane and "◂ AV layer" in pane
    assert f"L{n_layers - 1}" in pane and f"“{display_text(ui.lens[3][-1][0].text)}”" in pane


def test_the_lens_residuals_are_cached_with_the_activations(demo_engine, tmp_path):
    eng = demo_engine
    ids = [t.token_id for t in eng.tokens]
    caches = EngineCaches(tmp_path, enabled=True)
    first = caches.capture(eng.info, ids, eng.subject.capture)
    calls = eng.subject.forward_calls
    again = caches.capture(eng.info, ids, eng.subject.capture)
    assert eng.subject.forward_calls == calls  # from disk, the subject did not run
    np.testing.assert_array_equal(again.residuals, first.residuals)
