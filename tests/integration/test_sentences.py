"""Issue 23 item 3: per-sentence fidelity (core/nla/sentences.py) with the real demo AR."""

from dataclasses import replace

import numpy as np

from nla_tui.core.nla.sentences import sentence_scores, split_sentences
from nla_tui.core.store.export import to_markdown
from nla_tui.core.store.session import session_from_engine
from nla_tui.core.types import Sampling
from nla_tui.ui.state import UiState
from nla_tui.ui.widgets.explanation import render_token

IRRELEVANT = "Bananas are a popular fruit in tropical countries."


def test_leaving_out_an_appended_irrelevant_sentence_changes_little_and_an_own_line_most(demo_engine):
    eng = demo_engine
    i = len(eng.tokens) - 3
    exp = eng.explain([i], Sampling(temperature=0.0, max_new_tokens=48))[0]
    parts = split_sentences(exp.text)
    assert len(parts) >= 2, exp.text
    text = exp.text + " " + IRRELEVANT
    full = eng.ar.score([text], eng.activations[i][None])[0].fidelity
    scores = sentence_scores(eng.ar, text, eng.activations[i])
    assert [s.text for s in scores] == parts + [IRRELEVANT]
    support = [s.support(full) for s in scores]
    # leaving one of the explanation's own lines out changes the fidelity most (at this
    # chat-markup position the demo AR leans on the "Next: ..." line), the appended
    # irrelevant sentence little
    best = int(np.argmax(support))
    assert best < len(parts) and support[best] > 0.2, (parts, support)
    assert abs(support[-1]) < min(0.1, support[best] / 4), (parts, support)
    # the worker's path: the cursor's explanation gets its sentences, the pane and export shade them
    scored = eng.with_sentence_fidelity(exp)
    assert scored.sentences is not None and eng.explanations[i][0] is scored
    ui = UiState(info=eng.info, tokens=eng.tokens)
    ui.explanations = {i: [scored]}
    assert "sentences shaded by support" in render_token(ui, i).plain
    md = to_markdown(session_from_engine(eng, "s", [scored]))
    row = next(line for line in md.splitlines() if line.startswith(f"| {i} |"))
    for part in scored.sentences:  # each sentence's support after it ([...], escaped for markdown)
        assert f"{part.support(scored.score.fidelity):.3f}\\]" in row, row
    again = replace(scored, sentences=None).to_json() | {"sentences": [s.__dict__ for s in scored.sentences]}
    assert type(scored).from_json(again).sentences == scored.sentences
