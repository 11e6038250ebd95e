"""Checks on user input that need the subject's tokenizer but no weights."""

from __future__ import annotations

from ..models.context import check_context, context_limit
from ..models.conversation import tag_tokens
from ..models.loading import load_tokenizer, read_json, resolve_checkpoint
from ..nla.presets import resolve_sources
from ..types import Message


def check_transcript_fits(options, messages: list[Message], progress=None) -> int:
    """Tokenize the transcript with the subject's tokenizer (no weights load) and check it
    fits the subject's context; returns its length in tokens. `nla-tui run --messages`
    calls this before the engine loads anything. `progress(model, fraction, message)` hears
    about the demo's one-time build, which happens here on a first run."""
    _, sources = resolve_sources(options, progress)
    ckpt = resolve_checkpoint(sources["subject"])
    ids, _, _ = tag_tokens(load_tokenizer(ckpt), messages)
    check_context(len(ids), context_limit(read_json(ckpt.path / "config.json")), ckpt.name)
    return len(ids)
