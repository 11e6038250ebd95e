"""`nla-tui serve`: the HTTP API (app.py), its guard (guard.py: token, rate and size
limits) and the MCP tools (mcp_tools.py), all over the in-process API (core/api.py)."""
