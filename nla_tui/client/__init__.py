"""Talking to `nla-tui serve`: NlaClient (http.py, the core.api methods over HTTP) and
RemoteWorker (worker.py: the TUI's worker when it runs against a server, `nla-tui --server URL`).
HTTP only: no torch, no model code."""

from .http import NlaClient, ServerError, default_token

__all__ = ["NlaClient", "ServerError", "default_token"]
