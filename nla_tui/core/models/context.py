"""Does the conversation fit the subject's context? Checked before any model work.

`nla-tui run --messages` calls core.runtime.precheck.check_transcript_fits with the
tokenizer and config alone (no weights load), and the engine checks again before every
capture or reply, so an over-long transcript is one clear message, never a huge
allocation.
"""

from __future__ import annotations

from typing import Any

from ..errors import InputError


def context_limit(config: Any) -> int | None:
    """max_position_embeddings of a (text) config, object or config.json dict."""
    if isinstance(config, dict):
        config = config.get("text_config", config)
        value = config.get("max_position_embeddings")
    else:
        config = getattr(config, "text_config", None) or config
        value = getattr(config, "max_position_embeddings", None)
    return int(value) if value else None


def check_context(n_tokens: int, limit: int | None, subject: str, reply_tokens: int = 0) -> None:
    if limit is None or n_tokens + reply_tokens <= limit:
        return
    if reply_tokens:
        raise InputError(
            f"The conversation is {n_tokens:,} tokens and the reply may add {reply_tokens:,}, but {subject} "
            f"reads at most {limit:,} tokens (max_position_embeddings). Start a new conversation, open a "
            f"shorter transcript, or ask for fewer new tokens.")
    raise InputError(
        f"The conversation is {n_tokens:,} tokens once written in the subject's chat template, but {subject} "
        f"reads at most {limit:,} (max_position_embeddings in its config.json). Shorten the transcript "
        f"(drop early messages or trim long tool results) or use a subject with a longer context.")
