"""Helpers for the session/cache/export tests (no conftest: the lead owns that).

`make_session` builds a format-level session: these tests check bytes on disk and
markup, which do not depend on what a model produced. Tests whose behaviour does
depend on the model (cache hits skipping model calls) use the real demo engine.
"""

from __future__ import annotations

import shutil

import numpy as np

from nla_tui.core.store.session import Session
from nla_tui.core.types import (Candidate, Explanation, Message, ModelInfo, Sampling, Score,
                                TokenInfo)

TEXTS = ["<bos>", "<start_of_turn>", "user", "\n", "Why", " is", " the", " sky", " blue", "?",
         " | pipes | ", "</script>", " émoji 🌈", "`tick`", "<end_of_turn>"]


def make_info(d_model: int = 16, preset: str | None = "demo") -> ModelInfo:
    return ModelInfo(preset=preset, subject="google/gemma-3-270m", av="nla-demo/av",
                     ar="nla-demo/ar", layer=6, quant="fp32", device="cpu", d_model=d_model,
                     revision={"subject": "abc123", "av": None, "ar": None},
                     injection_scale=80.0, mse_scale=1.0, fve_variance=0.06, untrained_av=True)


def make_session(n_tokens: int = 15, d_model: int = 16, seed: int = 0, name: str = "sky",
                 n_explained: int = 4) -> Session:
    rng = np.random.default_rng(seed)
    acts = rng.standard_normal((n_tokens, d_model)).astype(np.float32)
    # Values that a lossy round trip (text, float64, fp16) would mangle.
    acts.flat[:4] = [-0.0, np.float32(1e-40), np.finfo(np.float32).max, np.float32(np.pi)]
    tokens = []
    for i in range(n_tokens):
        text = TEXTS[i % len(TEXTS)]
        role = "bos" if i == 0 else "special" if text.startswith("<") else "user"
        tokens.append(TokenInfo(index=i, token_id=1000 + i, text=text, role=role,
                                turn=-1 if i == 0 else 0, norm=float(np.linalg.norm(acts[i].astype(np.float64))),
                                top=[Candidate(7, " the", 0.5), Candidate(8, "\n", 0.25)]))
    explanations = []
    for k, i in enumerate(range(1, n_tokens, max(1, n_tokens // max(n_explained, 1)))):
        if k >= n_explained:
            break
        score = None if k == 0 else Score(cos=0.9 - 0.1 * k, mse_nrm=0.2 + 0.2 * k,
                                          fve_nrm=None if k == 1 else 0.8 - 0.3 * k)
        explanations.append(Explanation(
            index=i, text=f"explanation {k} of “{tokens[i].text}” | with </b> markup",
            raw=f"<explanation>explanation {k}</explanation>",
            sampling=Sampling(temperature=0.0 if k % 2 == 0 else 0.7, seed=k),
            prompt=None if k < 2 else "Describe <INJECT>", score=score,
            truncated=k == 3, warnings=["short"] if k == 3 else [], untrained_av=True))
    messages = [Message("user", "Why is the sky blue? | pipes | </script> émoji 🌈"),
                Message("assistant", "Rayleigh *scattering*.")]
    return Session(name=name, info=make_info(d_model), messages=messages, tokens=tokens,
                   explanations=explanations, activations=acts,
                   created="2026-01-02T03:04:05+00:00")


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium_flags(user_data_dir: str) -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={user_data_dir}"]


def read_png(path) -> np.ndarray:
    """Decode an 8-bit non-interlaced RGB/RGBA PNG (what Chromium writes) to uint8 [H, W, C].

    A few lines of zlib instead of a Pillow dependency just for the screenshot test.
    """
    import struct
    import zlib

    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and ctype in (2, 6) and interlace == 0, (depth, ctype, interlace)
            channels = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8)
    stride = width * channels
    rows = raw.reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.int32)
    for y in range(height):
        f, line = rows[y, 0], rows[y, 1:].astype(np.int32)
        prev = out[y - 1] if y else np.zeros(stride, np.int32)
        if f == 0:
            out[y] = line
        elif f == 2:
            out[y] = (line + prev) & 0xFF
        elif f in (1, 3, 4):  # these depend on the pixel to the left: go byte by byte
            cur = np.zeros(stride, np.int32)
            for x in range(stride):
                a = cur[x - channels] if x >= channels else 0
                b = prev[x]
                c = prev[x - channels] if x >= channels else 0
                if f == 1:
                    pred = a
                elif f == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                cur[x] = (line[x] + pred) & 0xFF
            out[y] = cur
        else:
            raise ValueError(f"bad PNG filter {f}")
    return out.reshape(height, width, channels).astype(np.uint8)


def hsl_to_rgb(h: float, s: float, l: float) -> tuple[int, int, int]:
    import colorsys

    r, g, b = colorsys.hls_to_rgb(h / 360, l, s)
    return round(r * 255), round(g * 255), round(b * 255)


REAL_SESSION = "tests/data/demo_real_session"


def record_real_session(out: str = REAL_SESSION) -> None:
    """Re-record the real demo-preset session the export tests replay:
    python -c "from tests._support_session import record_real_session as r; r()"
    """
    from nla_tui.core.runtime.engine import Engine
    from nla_tui.core.store.session import save_session, session_from_engine
    from nla_tui.core.types import Message, Sampling

    engine = Engine.from_options(preset="demo", device="cpu", quant="fp32", cache=False)
    engine.load()
    engine.set_conversation([Message("user", "Why is the sky blue?"),
                             Message("assistant", "Sunlight scatters off air molecules, and "
                                                  "blue light scatters the most.")])
    n = len(engine.tokens)
    picks = sorted({4, 6, 8, n // 2, n // 2 + 3, n - 6, n - 4, n - 2})
    explanations = engine.explain(picks, Sampling(max_new_tokens=24))
    session = session_from_engine(engine, "Why is the sky blue? (demo)", explanations)
    session.created = "2026-01-01T00:00:00+00:00"
    save_session(session, out)


BRANCH_SESSION = "tests/data/branch_session"


def record_branch_session(out: str = BRANCH_SESSION) -> None:
    """Re-record the real demo-preset session with a branch tree (issue 26): the agent
    transcript as captured (branch 0) and its tool result edited to a sunny forecast
    (branch 1), a few tokens explained on each side, branch 1 shown when saved:
    python -c "from tests._support_session import record_branch_session as r; r()"
    """
    from nla_tui.core.runtime.engine import Engine
    from nla_tui.core.store.session import save_session, session_from_engine
    from nla_tui.core.store.transcript import load_transcript
    from nla_tui.core.types import Sampling

    engine = Engine.from_options(preset="demo", device="cpu", quant="fp32", cache=False)
    engine.load()
    engine.set_conversation(load_transcript("tests/data/agent_transcript.json"))
    tool = next(i for i, m in enumerate(engine.messages) if m.role == "tool")
    fast = Sampling(max_new_tokens=24)
    branch = engine.edit_message(tool, '{"city": "Paris", "forecast": "sunny", "chance": 0.0}', label="sunny forecast")
    diff = engine.branch_diff()
    answer = [i for i, t in enumerate(branch.tokens) if t.turn == tool + 1 and t.role == "model"][:3]
    picks = [diff.changed[0], diff.changed[-1]] + answer
    engine.explain(picks, fast)
    root_exps = engine.explain_on_branch(0, [diff.aligned[i] for i in answer if i in diff.aligned], fast)
    session = session_from_engine(engine, "Umbrella? (demo, edited tool result)", root_exps)
    session.created = "2026-01-01T00:00:00+00:00"
    save_session(session, out)
