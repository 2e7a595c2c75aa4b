"""Running the server: in the foreground (``kontext-pipeline serve``) or on a background thread
(tests, and users' own tests of code that talks to BFL)."""

from __future__ import annotations

import threading
import time
from types import TracebackType

import uvicorn

from kontext_pipeline.server.app import create_app
from kontext_pipeline.server.state import ServerConfig, ServerState

__all__ = ["BackgroundServer", "serve"]

_START_TIMEOUT = 10.0


def serve(config: ServerConfig, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until interrupted, logging each request."""
    uvicorn.run(create_app(config), host=host, port=port, log_level="info", lifespan="off")


class BackgroundServer:
    """The server on a loopback port, on a thread of its own::

        with BackgroundServer(ServerConfig(latency=0.2)) as server:
            ...  # talk to server.url; server.state holds what it saw
    """

    def __init__(self, config: ServerConfig | None = None, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.state = ServerState(config or ServerConfig())
        self._config = uvicorn.Config(create_app(state=self.state), host=host, port=port,
                                      log_level="critical", access_log=False, lifespan="off")
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
