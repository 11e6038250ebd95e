"""The readouts beside the AV for the screenshot's cursor token (issue 23), recorded once
from the REAL demo engine on CPU (fp32) over this recording's conversation:

    python tests/data/recorded_session/record_readouts.py tests/data/recorded_session

writes readouts.json: the logit lens at CURSOR_TOKEN and the per-sentence fidelity of the
recorded explanation there (tests/_support_ui.py replays them into the pane).
"""

import json
import sys
from pathlib import Path

from nla_tui.core.nla.sentences import sentence_scores
from nla_tui.core.runtime.engine import Engine
from nla_tui.core.store.session import load_session

CURSOR_TOKEN = 14  # tests/_support_ui.py

out = Path(sys.argv[1])
session = load_session(out)
engine = Engine.from_options(preset="demo", device="cpu", quant="fp32")
engine.load()
engine.set_conversation(session.messages)
assert [t.token_id for t in engine.tokens] == [t.token_id for t in session.tokens], "the recording no longer matches"
lens = engine.logit_lens(CURSOR_TOKEN)
exp = next(e for e in session.explanations if e.index == CURSOR_TOKEN)
parts = sentence_scores(engine.ar, exp.text, session.activations[CURSOR_TOKEN])
doc = {"index": CURSOR_TOKEN,
       "lens": [[{"token_id": c.token_id, "text": c.text, "prob": c.prob} for c in layer] for layer in lens],
       "sentences": [{"text": p.text, "alone": p.alone, "without": p.without} for p in parts or []]}
(out / "readouts.json").write_text(json.dumps(doc, indent=1) + "\n")
print(out / "readouts.json")
