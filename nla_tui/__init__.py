"""nla-tui: read what a language model is thinking, token by token.

    from nla_tui import Nla, NlaClient, Sampling   # docs/API.md

`Nla` loads the models in this process; `NlaClient` talks to `nla-tui serve`. Both are
imported on first use, so `import nla_tui` stays free of torch and httpx.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "Nla": ("nla_tui.core.api", "Nla"),
    "Conversation": ("nla_tui.core.captured", "Conversation"),
    "Sampling": ("nla_tui.core.types", "Sampling"),
    "EngineOptions": ("nla_tui.core.options", "EngineOptions"),
    "NlaError": ("nla_tui.core.errors", "NlaError"),
    "NlaClient": ("nla_tui.client", "NlaClient"),
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nla_tui' has no attribute {name!r}")
    import importlib

    module, attr = _EXPORTS[name]
    return getattr(importlib.import_module(module), attr)


__all__ = sorted(_EXPORTS)
