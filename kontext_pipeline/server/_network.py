"""What stands between a client and the server's endpoints: the request log, the connections
that faults drop, and the address the server tells clients to come back to."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from kontext_pipeline.recipe._models import MODELS
from kontext_pipeline.server._state import RequestRecord, ServerState

__all__ = [
    "ConnectionDropped",
    "DroppedResponse",
    "Network",
    "checked_public_url",
    "endpoint_of",
    "public_base",
]

_DEFAULT_PORTS = {"http": 80, "https": 443}


class ConnectionDropped(Exception):  # noqa: N818  (a fault to inject, not an error)
    """Raised by the app to have the server close the connection with no answer at all, as a
    network fault would (see :mod:`kontext_pipeline.server._run`)."""


class DroppedResponse(Response):
    """Promises a body, then closes the connection without sending (most of) it."""

    def __init__(self, body: bytes = b"", promised: int = 1024, media_type: str = "") -> None:
        super().__init__(content=b"", media_type=media_type or None)
        self.partial = body
        self.headers["content-length"] = str(max(promised, len(body) + 1))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.partial, "more_body": True})
        raise ConnectionDropped("truncate")


def public_base(scope: Scope, configured: str | None) -> str:
    """The base of the URLs the server hands out (polling, results): the configured public URL,
    else the address of this server's socket that the request reached. Never the request's
    ``Host`` header, which the client writes: a client sending ``Host: evil.example`` would
    otherwise be told to poll, and send its key, there."""
    if configured:
        return configured
    host, port = scope.get("server") or ("127.0.0.1", None)
    scheme = "https" if scope.get("scheme") == "https" else "http"
    host = f"[{host}]" if ":" in str(host) else str(host)
    shown_port = "" if port is None or port == _DEFAULT_PORTS[scheme] else f":{port}"
    return f"{scheme}://{host}{shown_port}"


def checked_public_url(value: str) -> str | None:
    """``value`` as a public base (no trailing ``/``), if it is one: http(s), a host, an
    optional port and path, and nothing else (no user name, query or fragment)."""
    if not (value.isascii() and value.isprintable()) or any(c.isspace() for c in value):
        return None
    try:
        url = httpx.URL(value)
        port = url.port
    except httpx.InvalidURL:
        return None
    if (url.scheme not in _DEFAULT_PORTS or not url.host or url.userinfo or url.query
            or url.fragment or "?" in value or "#" in value
            or (port is not None and not 0 < port < 65536)):
        return None
    return value.rstrip("/")


def endpoint_of(method: str, path: str) -> str | None:
    """Which endpoint a request is for, as faults name them."""
    if method == "POST" and path.startswith("/v1/") and path.removeprefix("/v1/") in MODELS:
        return "submit"
    if path.endswith("/v1/get_result"):
        return "poll"
    return "download" if path.startswith("/delivery/") else None


async def _read_to_the_end(receive: Receive) -> None:
    """Take in the rest of a request before its connection is dropped: closing a socket with
    unread bytes (or with bytes still on the way) makes the kernel reset the connection, and the
    client would see a reset some times and a plain close other times for the same fault."""
    while (await receive()).get("more_body", False):
        pass


class Network:
    """Records each request (method, path, key, status, submit body) and when the last result
    download was sent in full, and drops the connections that ``drops`` says it drops, before
    the application sees them."""

    def __init__(self, app: ASGIApp, state: ServerState, drops: Callable[[str], bool]) -> None:
        self.app = app
        self.state = state
        self.drops = drops

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0
        recorded = False

        def record() -> None:
            """Log the request once: as its answer starts (before the client can read it, so
            that a test reading the log after the answer finds it there), or as it ends
            without one."""
            nonlocal recorded
            if recorded:
                return
            recorded = True
            headers = dict(scope["headers"])
            key = headers.get(b"x-key")
            self.state.requests.append(RequestRecord(
                method=scope["method"], path=scope["path"],
                query=scope["query_string"].decode("latin-1"),
                key=key.decode("latin-1") if key is not None else None, status=status,
                body=scope.get("state", {}).get("body")))

        async def record_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                record()
            await send(message)

        try:
            endpoint = endpoint_of(scope["method"], scope["path"])
            if endpoint is not None and self.drops(endpoint):
                await _read_to_the_end(receive)
                raise ConnectionDropped(endpoint)
            await self.app(scope, receive, record_status)
            if endpoint == "download" and status == 200:
                self.state.last_download = time.time()
        finally:
            record()
