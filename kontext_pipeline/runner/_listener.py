"""A small HTTP/1.1 listener that holds out against what the network sends it.

One request a connection (every answer says ``Connection: close``), and everything bounded:
at most :attr:`Limits.connections` connections are open at once (one beyond that is closed as
soon as it is accepted), the request line and headers must come within
:attr:`Limits.header_timeout` seconds and the body within :attr:`Limits.body_timeout` more (a
client that trickles a byte now and then is cut off), headers and body are capped in bytes,
and a full descriptor table pauses accepting instead of failing. Nothing here raises to the
caller or prints a traceback: what happened is counted on the :class:`Listener` and told,
one line each, to ``on_trouble`` (which is expected to rate-limit what it shows).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import TypeVar

import h11

from kontext_pipeline._support.timeouts import within

__all__ = ["Handler", "Limits", "Listener", "Request"]

_ACCEPT_PAUSE = 0.2  # seconds without accepting after the process ran out of descriptors
_LINGER_BYTES = 4_000_000  # read and dropped after refusing a large body, so the answer arrives
_T = TypeVar("_T")


@dataclass(frozen=True)
class Limits:
    """How much a client may take: connections open at once, seconds and bytes per request."""

    connections: int = 64
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    header_bytes: int = 16_384
    body_bytes: int = 1_000_000


@dataclass(frozen=True)
class Request:
    """A request as received: header names in lower case; ``body`` None if it was larger than
    :attr:`Limits.body_bytes` (it was not read further)."""

    method: str
    headers: Mapping[str, str]
    body: bytes | None
    sender: str


Handler = Callable[[Request], tuple[int, bytes]]
"""What answers a request: the status and a JSON body."""


class _SlowError(Exception):
    """The client did not send its headers or body in time."""


class Listener:
    """Serves ``handle`` on the listening socket ``sock`` within ``limits`` (see the module)."""

    def __init__(self, sock: socket.socket, handle: Handler, limits: Limits,
                 on_trouble: Callable[[str], None]) -> None:
        self.sock = sock
        self.handle = handle
        self.limits = limits
        self.on_trouble = on_trouble
        self.turned_away = 0  # closed at once: the most connections were open
        self.cut_off = 0  # too slow with their headers or body
        self.malformed = 0  # not HTTP/1.1, or headers over the limit
        self.accept_failures = 0  # the process (or the system) was out of descriptors
        self._open: set[asyncio.Task[None]] = set()

    async def serve(self) -> None:
        """Accept connections until cancelled; each one is served by a task of its own."""
        loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        while True:
            try:
                conn, address = await loop.sock_accept(self.sock)
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS, a connection reset meanwhile
                self.accept_failures += 1
                self.on_trouble(f"cannot accept a connection ({exc.strerror or exc}); "
                                "trying again shortly")
                await asyncio.sleep(_ACCEPT_PAUSE)
                continue
            sender = str(address[0]) if isinstance(address, tuple) else "an unknown address"
            if len(self._open) >= self.limits.connections:
                conn.close()
                self.turned_away += 1
                self.on_trouble(f"closed a connection from {sender} at once: "
                                f"{self.limits.connections} are open, the most allowed")
                continue
            task = asyncio.create_task(self._serve_one(conn, sender))
            self._open.add(task)
            task.add_done_callback(self._open.discard)

    async def aclose(self) -> None:
        """Stop the connections still open (the caller stops :meth:`serve`)."""
        for task in list(self._open):
            task.cancel()
        await asyncio.gather(*self._open, return_exceptions=True)

    async def _serve_one(self, conn: socket.socket, sender: str) -> None:
        try:
            await self._exchange(conn, sender)
        except _SlowError as slow:
            self.cut_off += 1
            self.on_trouble(f"cut off a connection from {sender}: {slow}")
        except h11.ProtocolError:  # what the client sent (h11's words quote it: not shown)
            self.malformed += 1
            self.on_trouble(f"closed a connection from {sender}: it sent no HTTP/1.1 request "
                            "the receiver takes")
        except OSError:
            pass  # the client went away; nothing to answer
        finally:
            conn.close()

    async def _exchange(self, conn: socket.socket, sender: str) -> None:
        limits = self.limits
        http = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.header_bytes)
        request = await _within(limits.header_timeout, "send its headers",
                                _next_event(conn, http))
        if not isinstance(request, h11.Request):
            return  # closed before a request
        headers = {name.decode("latin-1"): value.decode("latin-1")
                   for name, value in request.headers}  # h11 lower-cases the names
        if http.they_are_waiting_for_100_continue and not _too_large(headers, limits):
            go_on = http.send(h11.InformationalResponse(status_code=100, headers=[])) or b""
            await _within(limits.body_timeout, "take the answer", _send(conn, go_on))
        body = await _within(limits.body_timeout, "send its body",
                             _read_body(conn, http, headers, limits))
        status, answer = self.handle(Request(request.method.decode("latin-1"), headers, body,
                                             sender))
        fields = [("content-type", "application/json"), ("content-length", str(len(answer))),
                  ("connection", "close")]
        data = http.send(h11.Response(status_code=status, reason=HTTPStatus(status).phrase,
                                      headers=fields)) or b""
        if request.method != b"HEAD":  # the answer to a HEAD has no body
            data += http.send(h11.Data(data=answer)) or b""
        data += http.send(h11.EndOfMessage()) or b""
        await _within(limits.body_timeout, "take the answer", _send(conn, data))
        if body is None:  # unread bytes on close would reset the connection before the answer
            await _within(limits.body_timeout, "send the rest of its body", _drain(conn))


async def _within(seconds: float, what: str, step: Awaitable[_T]) -> _T:
    """``step``'s result, or :class:`_SlowError` once ``seconds`` have passed in all (however
    often the client sends a byte meanwhile)."""
    try:
        return await within(seconds, step)
    except asyncio.TimeoutError:
        raise _SlowError(f"it did not {what} within {seconds:g} s") from None


async def _next_event(conn: socket.socket, http: h11.Connection) -> object:
    loop = asyncio.get_running_loop()
    while True:
        event = http.next_event()
        if event is not h11.NEED_DATA:
            return event
        http.receive_data(await loop.sock_recv(conn, 65_536))  # b"": the client closed


def _too_large(headers: Mapping[str, str], limits: Limits) -> bool:
    declared = headers.get("content-length", "")  # h11 checked that it is ASCII digits
    return declared.isdecimal() and int(declared) > limits.body_bytes


async def _read_body(conn: socket.socket, http: h11.Connection, headers: Mapping[str, str],
                     limits: Limits) -> bytes | None:
    """The request's body, or None as soon as it is known to be larger than the limit."""
    if _too_large(headers, limits):
        return None
    limit = limits.body_bytes
    parts: list[bytes] = []
    size = 0
    while True:
        event = await _next_event(conn, http)
        if isinstance(event, h11.Data):
            size += len(event.data)
            if size > limit:
                return None
            parts.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            return b"".join(parts)
        else:  # the client closed mid-body
            raise ConnectionAbortedError("the client closed before the end of its request")


async def _send(conn: socket.socket, data: bytes) -> None:
    await asyncio.get_running_loop().sock_sendall(conn, data)


async def _drain(conn: socket.socket) -> None:
    """Read and drop what the client still sends (a bounded amount), once the answer is sent."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)
    dropped = 0
    while dropped < _LINGER_BYTES:
        chunk = await loop.sock_recv(conn, 65_536)
        if not chunk:
            return
        dropped += len(chunk)
