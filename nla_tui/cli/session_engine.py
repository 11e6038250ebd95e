"""Shared by `nla-tui steer`, `compare` and `explain-vectors`: the session's models
loaded over its conversation, AV sampling flags, and an atomic JSON writer."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

from ..core.errors import InputError
from ..core.types import EXPLAIN_TOKENS, group_by_index
from .common import engine_options, progress


def write_json(out: str, obj: Any) -> Path:
    path = Path(out).expanduser()
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):  # on a read-only disk even this unlink fails (EROFS)
            tmp.unlink(missing_ok=True)
        raise InputError(f"Could not write {path}: {e.strerror or e}. Choose another --out path.") from e
    return path


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-explain-tokens", type=int, default=EXPLAIN_TOKENS,
                   help=f"AV max new tokens (default {EXPLAIN_TOKENS})")
    p.add_argument("--temperature", type=float, default=0.0, help="AV sampling temperature (0 = greedy)")
    p.add_argument("--seed", type=int, default=0)


def sampling(args):
    """The AV sampling flags, range-checked (callers run this before loading any model)."""
    from ..core.types import Sampling
    from .validate import check_sampling

    check_sampling(args.temperature, args.max_explain_tokens, args.seed)
    return Sampling(temperature=args.temperature, max_new_tokens=args.max_explain_tokens, seed=args.seed)


def options_for(session, args):
    """The session's own models unless flags name others; device/precision from this machine."""
    from ..core.options import from_model_info

    opts = engine_options(args)
    if any((opts.preset, opts.subject, opts.av, opts.ar)):
        return opts
    return from_model_info(session.info, opts)


def load_engine(session, args):
    """A loaded Engine holding the session's conversation (recaptured), its explanations
    and its steered continuations. Refuses when the models tokenize it differently."""
    from ..core.runtime.engine import Engine

    engine = Engine(options_for(session, args))
    engine.load(progress)
    engine.set_conversation(list(session.messages))
    if [t.token_id for t in engine.tokens] != [t.token_id for t in session.tokens]:
        raise InputError("These models tokenize the session's conversation differently from the models that "
                         "saved it, so its token indices do not carry over. Run with the session's own models "
                         f"(--preset {session.info.preset or '…'} or --subject/--av/--ar as saved).")
    group_by_index(session.explanations, into=engine.explanations)
    engine.steered = list(session.steered)
    return engine


def check_token(session, index: int, what: str) -> None:
    n = len(session.tokens)
    if not 0 <= index < n:
        raise InputError(f"{what} {index} is out of range: the session has {n} tokens (0..{n - 1}); "
                         f"`nla-tui export SESSION` lists them.")
