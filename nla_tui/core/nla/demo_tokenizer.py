"""The demo build's tokenizer check: the Hugging Face tokenizer it saves must give the
GGUF tokenizer's exact ids, chat template included.

Why: converting a GGUF tokenizer depends on the transformers version. transformers
5.17 saved one that reloads as a character-level tokenizer ("</concept>" became 11
tokens), so the sidecar's ids drifted and `nla-tui --preset demo` stopped at load with
"template drift" — far from the cause. Checked at build time instead, the error names
the cause and the fix, and the half-built demo is discarded.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import NlaError

# The oldest transformers the whole suite (demo build included) has passed on; the
# lower bound in pyproject.toml is the same.
WORKING_TRANSFORMERS = "5.24"

PROBES = [
    [{"role": "user", "content": "Here is a hidden concept: <concept>㈜</concept>. Explain it inside "
                                 "<explanation></explanation> tags."}],
    [{"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "The capital of France is Paris. Voilà — 東京? def f(x): return x**2"}],
]


class TokenizerMismatch(NlaError):
    """The demo's saved tokenizer does not reproduce the GGUF tokenizer."""


def load_gguf_tokenizer():
    """The tokenizer embedded in the Gemma 3 270M GGUF (the reference)."""
    from transformers import AutoTokenizer

    from ..models.chat_template import ensure_chat_template
    from .demo_files import assemble_gguf

    gguf = assemble_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    ensure_chat_template(tok)
    return tok


def _ids(tok, conversation) -> list[int]:
    ids = tok.apply_chat_template(conversation, tokenize=True, add_generation_prompt=True)
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return [int(i) for i in ids]


def verify_saved_tokenizer(reference, saved_dir: str | Path) -> None:
    """Raise TokenizerMismatch unless the tokenizer saved in `saved_dir` encodes every
    probe conversation (through the chat template) to the reference's ids."""
    import transformers
    from transformers import AutoTokenizer

    from ..models.chat_template import ensure_chat_template

    saved = AutoTokenizer.from_pretrained(str(saved_dir))
    ensure_chat_template(saved)
    for conversation in PROBES:
        want, got = _ids(reference, conversation), _ids(saved, conversation)
        if want != got:
            at = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
            raise TokenizerMismatch(
                f"The demo build's converted tokenizer does not reproduce the GGUF tokenizer: a test "
                f"conversation is {len(want)} tokens with the GGUF tokenizer but {len(got)} with the saved "
                f"copy (first difference at token {at}). This transformers ({transformers.__version__}) "
                f"converts the Gemma 3 GGUF tokenizer wrongly (5.17 is known to); the demo is built and "
                f"tested with transformers >= {WORKING_TRANSFORMERS}. Upgrade with "
                f"pip install -U 'transformers>={WORKING_TRANSFORMERS}' and run nla-tui again (nothing "
                f"half-built was kept).")
