"""What the bundled server takes from uvicorn beyond its public API: the HTTP/1.1 protocol class
it subclasses (to drop connections unanswered and answer malformed requests in BFL's shape),
and what that subclass reads and overrides. pyproject.toml pins uvicorn to the versions tested;
when a new version moves any of it, this says what moved, before the fault tests fail
mysteriously."""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http import h11_impl

from kontext_pipeline.server._run import BackgroundServer

WIDEN = ("kontext_pipeline/server/_run.py subclasses it; keep uvicorn below {version} in "
         "pyproject.toml, or move _FaultyH11Protocol to what this version offers")


def moved(what: str) -> str:
    return f"uvicorn {uvicorn.__version__} {what}: " + WIDEN.format(version=uvicorn.__version__)


def test_the_protocol_class_and_the_400_it_overrides_are_where_they_were() -> None:
    protocol = getattr(h11_impl, "H11Protocol", None)
    assert inspect.isclass(protocol), moved(
        "has no class uvicorn.protocols.http.h11_impl.H11Protocol")
    assert issubclass(protocol, asyncio.Protocol), moved("H11Protocol is no asyncio.Protocol")
    send_400 = getattr(protocol, "send_400_response", None)
    assert callable(send_400), moved("H11Protocol has no send_400_response")
    assert list(inspect.signature(send_400).parameters) == ["self", "msg"], moved(
        f"H11Protocol.send_400_response takes {inspect.signature(send_400)}, not (self, msg)")
    assert not inspect.iscoroutinefunction(send_400), moved(
        "H11Protocol.send_400_response is a coroutine")


def test_a_connection_has_the_app_transport_and_h11_connection_the_subclass_reads() -> None:
    with BackgroundServer() as server, socket.create_connection(
            ("127.0.0.1", server.port), timeout=10):
        state = getattr(server._server, "server_state", None)  # uvicorn's, not public
        assert state is not None, moved("Server has no server_state")
        connections: set[Any] = getattr(state, "connections", set())
        deadline = time.monotonic() + 10
        while not connections and time.monotonic() < deadline:
            time.sleep(0.01)  # accepted on the server's own thread
        assert len(connections) == 1, moved("ServerState.connections holds no protocol")
        (protocol,) = connections
        assert callable(getattr(protocol, "app", None)), moved("H11Protocol has no app")
        assert isinstance(getattr(protocol, "transport", None), asyncio.Transport), moved(
            "H11Protocol has no transport")
        assert isinstance(getattr(protocol, "conn", None), h11.Connection), moved(
            "H11Protocol's conn is no h11.Connection")
