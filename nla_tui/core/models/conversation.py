"""Fold an OpenAI-style conversation onto the subject's chat template, and tag every
token with the role it plays.

Chat templates know fewer roles than agent transcripts. Gemma 3's knows only `user`
and `model` (a first `system` message is folded by the template itself into the first
user turn, followed by a blank line) and raises unless turns alternate. So, for every
subject, a conversation is written as:

- the first message, if `system`: kept as the template's system message (Gemma folds
  it into the first user turn; Qwen and Llama keep a system turn);
- `user`: the user side. A later `system` message (some agents inject reminders)
  joins the user side of the next turn, tagged `system`;
- `assistant`: the model side: its text, then each tool call as Gemma's
  function-calling guide has the model write it, a fenced block
  ```` ```tool_code\\nname(arg=value, …)\\n``` ```` (tagged `tool_call`);
- `tool` (and `function`): the tool result goes back on the user side, as that guide
  does, fenced ```` ```tool_output\\n…\\n``` ```` (tagged `tool_result`).

Consecutive pieces of the same side (parallel tool results, a result followed by the
user's next message) join one turn, separated by a blank line. Every token keeps the
index of the original message it came from (`turn`), so navigation, the role filter
and exports address messages as the file numbers them.

Tokenizer-only (no torch): `nla-tui run` uses it to check the context length before
any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from ..store.transcript import tool_call_text
from ..types import Message

# Tokens that open a new turn in common chat templates: scaffolding after one of
# these belongs to the next message, scaffolding before it to the previous one.
TURN_OPENERS = {"<start_of_turn>", "<|im_start|>", "<|start_header_id|>"}
USER_SIDE, MODEL_SIDE = "user", "assistant"


@dataclass(frozen=True)
class Piece:
    text: str  # as it appears in the templated text (stripped)
    role: str  # token role: system | user | model | tool_call | tool_result
    turn: int  # index of the original message


def fold(messages: list[Message]) -> tuple[list[dict[str, Any]], list[Piece]]:
    """Template messages (system? then user/assistant turns) and the tagged pieces
    they are made of, in the order the template writes them."""
    out: list[dict[str, Any]] = []
    pieces: list[Piece] = []
    side_pieces: list[Piece] = []
    side: str | None = None

    def flush() -> None:
        nonlocal side_pieces
        if side_pieces:
            out.append({"role": side, "content": "\n\n".join(p.text for p in side_pieces)})
            pieces.extend(side_pieces)
        side_pieces = []

    for i, m in enumerate(messages):
        if i == 0 and m.role == "system":
            text = m.content.strip()
            out.append({"role": "system", "content": text})
            pieces.append(Piece(text, "system", 0))
            continue
        if m.role == "assistant":
            new_side = MODEL_SIDE
            new = [Piece(m.content.strip(), "model", i)] if m.content.strip() else []
            new += [Piece(f"```tool_code\n{tool_call_text(c)}\n```", "tool_call", i) for c in m.tool_calls or []]
        elif m.role == "tool":
            new_side = USER_SIDE
            new = [Piece(f"```tool_output\n{m.content.strip()}\n```", "tool_result", i)]
        elif m.role in ("user", "system"):
            new_side = USER_SIDE
            new = [Piece(m.content.strip(), m.role, i)]
        else:
            raise InputError(f"Message {i} has role {m.role!r}: use system, user, assistant or tool.")
        if new_side != side:
            flush()
            side = new_side
        side_pieces += new
    flush()
    return out, pieces


def render(tokenizer, messages: list[Message], add_generation_prompt: bool = False) -> tuple[str, list[Piece]]:
    folded, pieces = fold(messages)
    try:
        text = tokenizer.apply_chat_template(folded, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as e:  # jinja raise_exception: roles must alternate, etc.
        raise InputError(f"The conversation does not fit the subject's chat template: {e}. After an optional "
                         f"system message it must start with a user (or tool) message; assistant and "
                         f"user/tool messages then take turns.") from None
    return text, pieces


def tag_tokens(tokenizer, messages: list[Message], add_generation_prompt: bool = False
               ) -> tuple[list[int], list[str], list[int]]:
    """Token ids of the templated conversation, exactly as the model sees it, with each
    token's role and the original message (turn) it belongs to."""
    text, pieces = render(tokenizer, messages, add_generation_prompt)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    spans, pos = [], 0
    for p in pieces:
        i = text.find(p.text, pos) if p.text else -1
        if i >= 0:
            spans.append((i, i + len(p.text), p.role, p.turn))
            pos = i + len(p.text)
    roles, turns = [], []
    turn, nxt = -1, 0
    bos = tokenizer.bos_token_id
    for k, (tid, (s, e)) in enumerate(zip(ids, offsets)):
        while nxt < len(spans) and spans[nxt][1] <= s:
            nxt += 1
        inside = nxt < len(spans) and s < spans[nxt][1] and e > spans[nxt][0] and e > s
        if k == 0 and tid == bos:
            roles.append("bos")
            turns.append(-1)
            continue
        if inside:
            turn = spans[nxt][3]
            roles.append(spans[nxt][2])
        else:
            if tokenizer.convert_ids_to_tokens(tid) in TURN_OPENERS:
                turn = spans[nxt][3] if nxt < len(spans) else len(messages)
            roles.append("special")
        turns.append(max(turn, 0))
    return list(ids), roles, turns
