"""How this session was recorded (once, from the REAL demo engine on CPU).

    python tests/data/recorded_session/record.py tests/data/recorded_session

Gemma 3 270M subject + the demo's trained AV/AR pair (the mini NLA pair trained by
training/, shipped as nla_tui/core/nla/demo_adapters; demo v2), fp32, greedy. Every
token explained with the default Sampling; the session's models carry the pair's
label and note. The UI tests replay it through nla_tui.core.runtime.replay.ReplayWorker,
so their screens are deterministic; screenshots/ and the SVG snapshots are made from it.
Then record_steer.py adds the steered continuation (at the default strength) and writes
comparisons.json, both with the trained pair over this recording.
"""

import sys

from nla_tui.core.runtime.engine import Engine
from nla_tui.core.store.session import save_session, session_from_engine

PROMPT = "The Eiffel Tower is in"  # tests/_support_ui.py RECORDED_PROMPT

engine = Engine.from_options(preset="demo", device="cpu", quant="fp32")
engine.load()
engine.chat(PROMPT, max_new_tokens=20)
explanations = engine.explain(list(range(len(engine.tokens))))
print(save_session(session_from_engine(engine, "recorded demo session", explanations), sys.argv[1]))
