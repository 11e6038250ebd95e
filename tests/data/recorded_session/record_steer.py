"""How the steered continuation and the comparison in this directory were recorded (once,
from the REAL demo engine on CPU, over this very session):

    python tests/data/recorded_session/record_steer.py tests/data/recorded_session

Adds one steered continuation to session.json's `steered` list and writes comparisons.json; the UI
tests and screenshots replay them (tests/_support_ui.py STEER_EDIT, COMPARE_PAIR).
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root

from tests._support_ui import COMPARE_PAIR, STEER_EDIT, STEER_TOKEN  # noqa: E402

from nla_tui.core.runtime.engine import Engine  # noqa: E402
from nla_tui.core.store.session import load_session, save_session  # noqa: E402
from nla_tui.core.types import Sampling  # noqa: E402
from nla_tui.core.runtime.steer import compare, steer  # noqa: E402
from nla_tui.core.steer_jobs import DEFAULT_ALPHA  # noqa: E402

directory = Path(sys.argv[1])
session = load_session(directory)
engine = Engine.from_options(preset="demo", device="cpu", quant="fp32")
engine.load()
engine.set_conversation(session.messages)
assert [t.token_id for t in engine.tokens] == [t.token_id for t in session.tokens]
original = next(e.text for e in session.explanations if e.index == STEER_TOKEN)
result = steer(engine, STEER_TOKEN, STEER_EDIT, DEFAULT_ALPHA, "here", 32, original=original)
session.steered = [result]
save_session(session, directory)
c = compare(engine, *COMPARE_PAIR, Sampling(max_new_tokens=48))
(directory / "comparisons.json").write_text(json.dumps([c.to_json()], indent=1, ensure_ascii=False) + "\n")
print(result.original_text, "|", result.steered_text)
