"""What stands in front of every route of `nla-tui serve`: the bearer token, a request
rate limit and a body size limit, each refused with a JSON one-line reason.

The token is generated at the first start and kept 0600 in the user config dir
(paths.config_root(); NLA_TUI_CONFIG overrides), so a client on the same account reads
it from there and anyone else needs it handed over.
"""

from __future__ import annotations

import collections
import hmac
import json
import os
import secrets
import stat
import time
from pathlib import Path

from ..core.errors import InputError
from ..paths import server_token_path

MAX_BODY_BYTES = 8 << 20  # 64 vectors of a 27B model's 5,376 floats as JSON fit in ~8 MiB
RATE_PER_MINUTE = 600


def load_or_create_token(path: Path | None = None) -> tuple[str, Path, bool]:
    """(token, where it is, whether it was created now). A token file others can read is refused."""
    path = path or server_token_path()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic, and never over a token another server wrote meanwhile
            created = True
        except FileExistsError:
            created = False
        finally:
            tmp.unlink()
    else:
        created = False
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InputError(f"The server token {path} can be read by other users (mode {oct(mode & 0o777)}): "
                         f"run `chmod 600 {path}` (or delete it to get a new token).")
    token = path.read_text(encoding="utf-8").strip()
    if len(token) < 16:
        raise InputError(f"The server token in {path} is shorter than 16 characters: delete the file and "
                         f"restart to get a new one.")
    return token, path, created


async def send_refusal(send, status: int, reason: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"error": reason}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


# Client ids the limit tells apart: beyond this many, the longest-idle are forgotten.
MAX_TRACKED_CLIENTS = 1024
CLIENT_ID_HEADERS = (b"x-client-id", b"mcp-session-id")  # NlaClient (one per instance); an MCP session


class Guard:
    """ASGI middleware: rate limit (refused requests too, so guessing tokens is slow), the
    bearer token (compared in constant time), then the declared body size.

    The rate limit is per client, so one busy client (a TUI explaining everything, an agent
    in a loop) cannot lock the others out: a client with the token is told apart by its
    address and the id it sends (X-Client-Id: NlaClient and the attached TUI send one per
    instance; an MCP session's Mcp-Session-Id), one without an id by its address alone.
    Requests without the right token count against their address, whatever id they claim."""

    def __init__(self, app, token: str, token_file: Path | None = None, rate_per_minute: int = RATE_PER_MINUTE,
                 max_body_bytes: int = MAX_BODY_BYTES):
        self.app, self.token = app, token.encode()
        self.where = f" (on the server: {token_file})" if token_file else ""
        self.rate_per_minute, self.max_body_bytes = rate_per_minute, max_body_bytes
        self.recent: dict[tuple, collections.deque[float]] = {}

    @staticmethod
    def client_key(scope, headers: dict[bytes, bytes], authorised: bool) -> tuple:
        host = (scope.get("client") or ("?",))[0]
        if not authorised:
            return (host, "unauthorised")
        cid = next((headers[h] for h in CLIENT_ID_HEADERS if headers.get(h)), b"")
        return (host, cid[:64])

    def _over_rate(self, key: tuple) -> float | None:
        now = time.monotonic()
        recent = self.recent.get(key)
        if recent is None:
            if len(self.recent) >= MAX_TRACKED_CLIENTS:
                self._forget_idle(now)
            recent = self.recent[key] = collections.deque()
        while recent and now - recent[0] > 60:
            recent.popleft()
        if len(recent) >= self.rate_per_minute:
            return 60 - (now - recent[0])
        recent.append(now)
        return None

    def _forget_idle(self, now: float) -> None:
        """Clients quiet for a minute have nothing left to count; if all are busy, the quietest go."""
        self.recent = {k: q for k, q in self.recent.items() if q and now - q[-1] <= 60}
        if len(self.recent) >= MAX_TRACKED_CLIENTS:
            by_last = sorted(self.recent, key=lambda k: self.recent[k][-1])
            for k in by_last[:len(by_last) - MAX_TRACKED_CLIENTS // 2]:
                del self.recent[k]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)  # lifespan
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization", b"")
        scheme, _, given = auth.partition(b" ")
        authorised = scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)
        wait = self._over_rate(self.client_key(scope, headers, authorised))
        if wait is not None:
            return await send_refusal(send, 429, f"Too many requests: at most {self.rate_per_minute} a minute "
                                                 f"per client; retry in {wait:.0f} s.",
                                      [(b"retry-after", b"%d" % (wait + 1))])
        if not authorised:
            what = "Wrong bearer token" if auth else "No bearer token"
            return await send_refusal(send, 401, f"{what}: send the header 'Authorization: Bearer <token>' with "
                                                 f"the server's token{self.where}.", [(b"www-authenticate", b"Bearer")])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return await send_refusal(send, 413, f"The request body is {int(declared):,} bytes, over the "
                                                 f"{self.max_body_bytes:,}-byte limit: send fewer vectors a request.")
        return await self.app(scope, receive, send)
