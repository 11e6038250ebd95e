"""Read an OpenAI-style transcript file: a JSON list of {"role", "content"}."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError
from ..types import Message

ROLES = ("system", "user", "assistant")


def load_transcript(path: str | Path) -> list[Message]:
    p = Path(path).expanduser()
    if p.is_dir():
        raise InputError(f"Transcript {p} is a folder; give the JSON file itself.")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"No transcript at {p}: the file does not exist; check the path.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"Cannot read transcript {p}: {e}") from None
    except RecursionError:
        raise InputError(f"Transcript {p} is nested too deeply to be a list of messages.") from None
    except json.JSONDecodeError as e:
        raise InputError(f"Transcript {p} is not valid JSON (line {e.lineno}: {e.msg}); "
                         'expected [{"role": "user", "content": "..."}, ...].') from None
    if isinstance(doc, dict) and isinstance(doc.get("messages"), list):
        doc = doc["messages"]  # {"messages": [...]} as written by many exporters
    if not isinstance(doc, list) or not doc:
        raise InputError(f"Transcript {p} must be a non-empty JSON list of "
                         '{"role", "content"} objects (OpenAI style).')
    out = []
    for i, m in enumerate(doc):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise InputError(f"Transcript {p}, message {i}: expected OpenAI style {{\"role\": one of "
                             f"{', '.join(ROLES)}, \"content\": string}}, got {str(m)[:80]!r}.")
        out.append(Message(role=m["role"], content=m["content"]))
    return out
