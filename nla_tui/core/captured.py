"""What the API (core/api.py) and its HTTP client (nla_tui/client.py) hand back for a
captured conversation, and the shapes they accept. Plain data, no torch: the client
imports it without any model code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, Union

from .events import ExplainDelta
from .types import Explanation, Message, TokenInfo

# A prompt string (one user turn), Message objects, OpenAI-style dicts or {"messages": [...]}.
Messages = Union[str, Sequence[Union[Message, dict]], dict]
# What an explanation stream yields: the text so far of one row, then each finished Explanation.
StreamItem = Union[ExplainDelta, Explanation]


@dataclass
class Conversation:
    """A captured conversation: the handle later calls name, the messages, and every token
    as the subject saw it (role, turn, layer-K norm, top-k next-token candidates)."""

    handle: str
    messages: list[Message]
    tokens: list[TokenInfo]

    def to_json(self) -> dict[str, Any]:
        return {"handle": self.handle, "messages": [m.to_json() for m in self.messages],
                "tokens": [t.to_json() for t in self.tokens]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Conversation":
        return cls(str(d["handle"]), [Message.from_json(m) for m in d["messages"]],
                   [TokenInfo.from_json(t) for t in d["tokens"]])
