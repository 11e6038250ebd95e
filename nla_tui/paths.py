"""Where nla-tui keeps things on disk (platformdirs), each overridable by env."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP = "nla-tui"


def cache_root() -> Path:
    """Activation/explanation caches and the converted demo models. Env NLA_TUI_CACHE overrides."""
    env = os.environ.get("NLA_TUI_CACHE")
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir(APP))


def data_root() -> Path:
    """Saved sessions. Env NLA_TUI_DATA overrides."""
    env = os.environ.get("NLA_TUI_DATA")
    return Path(env).expanduser() if env else Path(platformdirs.user_data_dir(APP))


def sessions_dir() -> Path:
    return data_root() / "sessions"


def models_dir() -> Path:
    """Models nla-tui builds itself (the demo pair)."""
    return cache_root() / "models"


def config_root() -> Path:
    """Settings, and the bearer token of `nla-tui serve`. Env NLA_TUI_CONFIG overrides."""
    env = os.environ.get("NLA_TUI_CONFIG")
    return Path(env).expanduser() if env else Path(platformdirs.user_config_dir(APP))


def server_token_path() -> Path:
    """The bearer token `nla-tui serve` generates at its first start (0600); clients of the same user read it."""
    return config_root() / "server-token"
