"""Running the server: in the foreground (``kontext-pipeline serve``) or on a background thread
(tests, and users' own tests of code that talks to BFL)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from types import TracebackType
from typing import Any

import h11
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from kontext_pipeline.server._app import ConnectionDropped, create_app
from kontext_pipeline.server._state import ServerConfig, ServerState

__all__ = ["BackgroundServer", "serve"]

_START_TIMEOUT = 10.0


class _FaultyH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, and one thing more: when the app raises
    :class:`ConnectionDropped`, the connection is closed there and then, with no answer (or the
    rest of one) and no error logged, as a network fault would do it. (Without this, uvicorn
    answers an exception with a 500.) A request HTTP itself cannot take (a request line or
    headers too long, malformed) is answered 400 in BFL's shape, not uvicorn's plain text.

    Neither can be done through uvicorn's public API (ASGI has no way to close a connection
    unanswered), so this subclass reads ``app``, ``transport`` and ``conn`` and overrides
    ``send_400_response``: pyproject.toml pins uvicorn to the versions tested, and
    tests/server/test_uvicorn_surface.py says what changed when a new one moves them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.app = self._dropping(self.app)

    def _dropping(self, app: ASGIApp) -> ASGIApp:
        async def dropping(scope: Scope, receive: Receive, send: Send) -> None:
            try:
                await app(scope, receive, send)
            except ConnectionDropped:
                self.transport.close()
                for _ in range(3):  # let connection_lost mark the exchange as disconnected
                    await asyncio.sleep(0)

        return dropping

    def send_400_response(self, msg: str) -> None:
        body = json.dumps({"detail": msg}).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close"),
                   (b"content-length", str(len(body)).encode())]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                      h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()


def serve(config: ServerConfig, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until interrupted, logging each request."""
    uvicorn.run(create_app(config), host=host, port=port, log_level="info", lifespan="off",
                http=_FaultyH11Protocol, proxy_headers=False)


class BackgroundServer:
    """The server on a loopback port, on a thread of its own::

        with BackgroundServer(ServerConfig(latency=0.2)) as server:
            ...  # talk to server.url; server.state holds what it saw
    """

    def __init__(self, config: ServerConfig | None = None, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.state = ServerState(config or ServerConfig())
        self._config = uvicorn.Config(create_app(state=self.state), host=host, port=port,
                                      log_level="critical", access_log=False, lifespan="off",
                                      http=_FaultyH11Protocol, proxy_headers=False)
        self._server = uvicorn.Server(self._config)
        self._thread = threading.Thread(target=self._server.run, name="bfl-server", daemon=True)
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the BFL-compatible server did not start on {self.url}")
            time.sleep(0.01)
        sockets = self._server.servers[0].sockets
        self.port = int(sockets[0].getsockname()[1])
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=_START_TIMEOUT)
