"""Read an agent transcript in the OpenAI chat format (the one reader for the CLI and the UI).

Accepted, in one file:
- a JSON list of messages, or the `{"messages": [...]}` wrapper many exporters write;
- JSONL: one message object per line (blank lines skipped).

A message is OpenAI's: role `system` | `user` | `assistant` | `tool` (`function`, the
older name, is read as `tool`; `developer` as `system`); `content` a string, null (an
assistant turn that only calls tools) or a list of parts (`{"type": "text", "text": …}`;
other parts such as images become a visible `[image_url]` placeholder, since the subject
reads text only); an assistant's `tool_calls` (`function.name` + `function.arguments`
as a JSON string or object) and the older single `function_call`; a tool result's
`tool_call_id` and `name`.

Pure Python (no torch): the UI validates a file before handing it to the worker.
How these roles are folded into a chat template is core.conversation's job.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import InputError, brief
from ..types import Message

ROLE_ALIASES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
                "tool": "tool", "function": "tool"}
EXPECTED = ('{"role": "system"|"user"|"assistant"|"tool", "content": string or list of parts, '
            'optional "tool_calls", "tool_call_id", "name"}')


def load_transcript(path: str | Path) -> list[Message]:
    p = Path(path).expanduser()
    if p.is_dir():
        raise InputError(f"Transcript {p} is a folder; give the JSON file itself.")
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"Transcript {p} does not exist; check the path.") from None
    except IsADirectoryError:
        raise InputError(f"{p} is a directory; give a transcript file (.json or .jsonl). "
                         f"A saved session opens with `nla-tui open {p}`.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"Cannot read transcript {p}: {e}") from None
    return parse_transcript(text, str(p))


def parse_transcript(text: str, where: str = "the transcript") -> list[Message]:
    """Messages from JSON (a list or {"messages": [...]}) or JSONL text."""
    doc = _parse_json_or_jsonl(text, where)
    if isinstance(doc, dict) and isinstance(doc.get("messages"), list):
        doc = doc["messages"]
    if not isinstance(doc, list) or not doc:
        raise InputError(f"{where} must hold a non-empty JSON list of messages (or "
                         f'{{"messages": [...]}}, or one message per line), each {EXPECTED}.')
    return [parse_message(m, i, where) for i, m in enumerate(doc)]


def _parse_json_or_jsonl(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise InputError(f"{where} nests too deeply to be a transcript.") from None
    except ValueError as first:  # JSONDecodeError, or a number of more than 4300 digits
        if not isinstance(first, json.JSONDecodeError):
            raise InputError(f"{where} is not a transcript ({brief(str(first))}).") from None
        # JSONL lines end at "\n" only: str.splitlines would also split at U+2028, U+0085
        # and friends, which json.dumps(ensure_ascii=False) leaves raw inside strings.
        lines = [(n, ln) for n, ln in enumerate(text.split("\n"), 1) if ln.strip()]
        if len(lines) < 2:
            raise InputError(f"{where} is not valid JSON (line {first.lineno}: {first.msg}); expected a "
                             f"list of messages, {{\"messages\": [...]}}, or JSONL (one message per line).") from None
        out = []
        for n, ln in lines:
            try:
                out.append(json.loads(ln))
            except (ValueError, RecursionError) as e:
                raise InputError(f"{where} is neither JSON nor JSONL: line {n} is not a JSON object "
                                 f"({getattr(e, 'msg', None) or brief(str(e))}). Write one message object per line, or one JSON list.") from None
        return out


def parse_message(m: Any, i: int, where: str = "the transcript") -> Message:
    def bad(why: str) -> InputError:
        return InputError(f"{where}, message {i}: {why}. Expected {EXPECTED}; got {brief(m)}.")

    if not isinstance(m, dict):
        raise bad("not an object")
    raw_role = m.get("role")
    role = ROLE_ALIASES.get(raw_role) if isinstance(raw_role, str) else None
    if role is None:
        raise bad(f"unknown role {brief(raw_role)} (a role is one of the strings system, user, assistant, tool)")
    content = content_text(m.get("content"), bad)
    calls = m.get("tool_calls")
    if m.get("function_call") is not None and not calls:  # the pre-2024 single call
        calls = [{"type": "function", "function": m["function_call"]}]
    if calls is not None:
        if role != "assistant":
            raise bad("only assistant messages carry tool_calls")
        if not isinstance(calls, list):
            raise bad("tool_calls must be a list")
        calls = [_check_call(c, bad) for c in calls]
    if role in ("system", "user") and not content.strip():
        raise bad("empty content")
    if role == "assistant" and not content.strip() and not calls:
        raise bad("an assistant message needs content or tool_calls")
    name = m.get("name")
    call_id = m.get("tool_call_id")
    for key, value in (("name", name), ("tool_call_id", call_id)):
        if value is not None and not isinstance(value, str):
            raise bad(f"{key} must be a string")
    return Message(role=role, content=content, name=None if name is None else str(name),
                   tool_calls=calls or None, tool_call_id=None if call_id is None else str(call_id))


def content_text(content: Any, bad) -> str:
    """OpenAI content (string, null, or a list of parts) as one string."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, dict) and isinstance(part.get("type"), str):
                parts.append(f"[{part['type']}]")  # an image etc.: the subject reads text only
            else:
                raise bad("a content part is neither text nor {\"type\": ...}")
        return "\n".join(parts)
    raise bad("content must be a string, null or a list of parts")


def _check_call(c: Any, bad) -> dict[str, Any]:
    if not isinstance(c, dict) or not isinstance(c.get("function"), dict) or \
            not isinstance(c["function"].get("name"), str):
        raise bad('each tool call needs {"function": {"name": ..., "arguments": ...}}')
    args = c["function"].get("arguments", "")
    if not isinstance(args, (str, dict, list)):
        raise bad("tool call arguments must be a JSON string or object")
    out = {"type": c.get("type", "function"), "function": {"name": c["function"]["name"], "arguments": args}}
    if c.get("id") is not None:
        if not isinstance(c["id"], str):
            raise bad("a tool call id must be a string")
        out["id"] = c["id"]
    return out


def tool_call_text(call: dict[str, Any]) -> str:
    """A call as the model writes it in Gemma's function-calling convention:
    `name(key=value, …)` with JSON values (arguments that are not a JSON object are
    passed through as written)."""
    fn = call.get("function", {})
    args = fn.get("arguments", "")
    if isinstance(args, str):
        try:
            parsed = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return f"{fn.get('name', '?')}({args})"
        args = parsed
    if isinstance(args, dict):
        inner = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in args.items())
    else:
        inner = json.dumps(args, ensure_ascii=False)
    return f"{fn.get('name', '?')}({inner})"


def message_display_text(m: Message) -> str:
    """What the chat pane and the Markdown export show for a message: its content and,
    for an assistant, each tool call on its own line."""
    parts = [m.content] if m.content.strip() else []
    parts += ["→ " + tool_call_text(c) for c in m.tool_calls or []]
    return "\n".join(parts)


# Gemma's chat-template markers. Typed into a message they are not text: the template
# copies content verbatim and the tokenizer turns each into its control token, so the
# subject sees a turn end where the user typed one. (Gemma's template offers no escape
# for them, so nla-tui keeps the text as written and warns.)
CONTROL_MARKERS = ("<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<pad>", "<start_of_image>", "<end_of_image>")


def control_marker_warning(messages: list[Message]) -> str | None:
    """A warning when a message's text holds a chat-template marker, else None."""
    for i, m in enumerate(messages):
        found = [k for k in CONTROL_MARKERS if k in m.content]
        if found:
            return (f"message {i} ({m.role}) contains {', '.join(found)} as text; the chat template turns it into "
                    "a real control token, so the model sees the structure it names (e.g. a turn ending there), "
                    "not the characters.")
    return None
