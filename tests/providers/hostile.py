"""A hostile BFL-like server on loopback, over raw sockets: it does what no well-behaved server
framework would (endless bodies, gzip bombs, a byte at a time, images of another format, the
key put back into URLs). Each endpoint follows its mode; every request is recorded."""

from __future__ import annotations

import asyncio
import json
import threading
import zlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

__all__ = ["HostileServer", "Request", "bomb_unit"]

CAP = 2 << 30
"""An endless body stops after this many raw bytes, whatever the client does."""

Endpoint = Callable[["Request", asyncio.StreamWriter], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    headers: dict[str, str] = field(default_factory=dict)


def bomb_unit(layers: int) -> tuple[bytes, bytes]:
    """A gzip stream's start, and a piece to repeat after it for ever: each repeat inflates
    to 1 MB of spaces (``layers`` 1), or to 1 GB (``layers`` 2: gzip of gzip)."""
    start, unit, repeats = b"", b" " * 1_000_000, 1
    for _ in range(layers):
        packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
        # after a full flush the same input packs to the same bytes: the piece repeats
        start = packer.compress(start) + packer.flush(zlib.Z_FULL_FLUSH)
        unit = packer.compress(unit * repeats) + packer.flush(zlib.Z_FULL_FLUSH)
        repeats = 1000
    return start, unit


class HostileServer:
    """``submit``, ``poll`` and ``result`` name each endpoint's behaviour (see the methods
    named after them); ``image`` is what ``result`` mode ``image`` serves."""

    def __init__(self, *, submit: str = "accept", poll: str = "ready", result: str = "image",
                 image: bytes = b"", trickle: float = 0.2) -> None:
        self.modes = {"submit": submit, "poll": poll, "result": result}
        self.image = image
        self.trickle = trickle
        self.requests: list[Request] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    def __enter__(self) -> HostileServer:
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        port = started.result(timeout=10)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def hits(self, prefix: str) -> list[Request]:
        return [r for r in self.requests if r.target.startswith(prefix)]

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        serving = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in serving:
            task.cancel()
        await asyncio.gather(*serving, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (line.partition(":") for line in lines[1:] if line)}
            await reader.readexactly(int(headers.get("content-length", "0")))
            request = Request(method, target, headers)
            self.requests.append(request)
            kind = ("submit" if method == "POST" else
                    "poll" if target.startswith("/v1/get_result") else "result")
            endpoint: Endpoint = getattr(self, f"_{kind}_{self.modes[kind].replace('-', '_')}")
            await endpoint(request, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client hung up: what an endless body waits for
        except asyncio.CancelledError:
            pass  # the server is stopping
        finally:
            writer.close()

    # -- answers ------------------------------------------------------------------------------

    async def _answer(self, writer: asyncio.StreamWriter, status: str, body: bytes,
                      kind: str = "application/json", extra: str = "") -> None:
        writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: "
                     f"{len(body)}\r\nConnection: close\r\n{extra}\r\n".encode() + body)
        await writer.drain()

    async def _endless(self, writer: asyncio.StreamWriter, status: str, extra: str,
                       start: bytes, unit: bytes) -> None:
        """Headers (no length: the body ends when the connection does), then for ever."""
        writer.write(f"HTTP/1.1 {status}\r\nConnection: close\r\n{extra}\r\n".encode() + start)
        sent = len(start)
        while sent < CAP:
            writer.write(unit)
            sent += len(unit)
            await writer.drain()

    async def _trickle(self, writer: asyncio.StreamWriter, kind: str) -> None:
        """A 200's headers, then its body a byte at a time, for ever (each byte well within
        any read timeout)."""
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: "
                     "1000000\r\n\r\n".encode())
        for _ in range(1_000_000):
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(self.trickle)

    def _ready(self, request: Request, sample: str | None = None) -> bytes:
        return json.dumps({"id": "t1", "status": "Ready", "result": {
            "sample": sample or f"{self.url}/results/t1/sample.png?sig=abc", "seed": 7}}).encode()

    # -- submit modes ---------------------------------------------------------------------------

    async def _submit_accept(self, request: Request, writer: asyncio.StreamWriter) -> None:
        await self._answer(writer, "200 OK", json.dumps({
            "id": "t1", "polling_url": f"{self.url}/v1/get_result?id=t1", "cost": 4}).encode())

    async def _submit_key_encoded(self, request: Request, writer: asyncio.StreamWriter) -> None:
        key = "".join(f"%{ord(c):02x}" for c in request.headers["x-key"])
        await self._answer(writer, "200 OK", json.dumps({
            "id": "t1", "polling_url": f"{self.url}/v1/get_result?id=t1&k={key}"}).encode())

    async def _submit_trickle(self, request: Request, writer: asyncio.StreamWriter) -> None:
        await self._trickle(writer, "application/json")

    async def _submit_endless_500(self, request: Request, writer: asyncio.StreamWriter) -> None:
        await self._endless(writer, "500 Internal Server Error",
                            "Content-Type: text/plain\r\nRetry-After: 0\r\n", b"",
                            b"error " * 10_000)

    # -- poll modes -----------------------------------------------------------------------------

    async def _poll_ready(self, request: Request, writer: asyncio.StreamWriter) -> None:
        await self._answer(writer, "200 OK", self._ready(request))

    async def _poll_gzip_bomb(self, request: Request, writer: asyncio.StreamWriter) -> None:
        await self._endless(writer, "200 OK", "Content-Type: application/json\r\n"
                            "Content-Encoding: gzip\r\nRetry-After: 0\r\n", *bomb_unit(1))

    async def _poll_gzip_gzip_bomb(self, request: Request,
                                   writer: asyncio.StreamWriter) -> None:
        await self._endless(writer, "200 OK", "Content-Type: application/json\r\n"
                            "Content-Encoding: gzip, gzip\r\nRetry-After: 0\r\n", *bomb_unit(2))

    async def _poll_trickle(self, request: Request, writer: asyncio.StreamWriter) -> None:
        await self._trickle(writer, "application/json")

    async def _poll_key_in_query(self, request: Request, writer: asyncio.StreamWriter) -> None:
        key = request.headers["x-key"]
        await self._answer(writer, "200 OK", self._ready(
            request, f"{self.url}/results/t1/sample.png?sig=abc&leak={key}"))

    async def _poll_key_encoded(self, request: Request, writer: asyncio.StreamWriter) -> None:
        key = "".join(f"%{ord(c):02X}" for c in request.headers["x-key"])
        await self._answer(writer, "200 OK", self._ready(
            request, f"{self.url}/results/t1/sample.png#{key.lower()}"))

    async def _poll_key_in_userinfo(self, request: Request,
                                    writer: asyncio.StreamWriter) -> None:
        key = request.headers["x-key"]
        await self._answer(writer, "200 OK", self._ready(
            request, self.url.replace("http://", f"http://k:{key}@") + "/results/t1.png"))

    # -- result modes ---------------------------------------------------------------------------

    async def _result_image(self, request: Request, writer: asyncio.StreamWriter) -> None:
        await self._answer(writer, "200 OK", self.image, "image/png")

    async def _result_trickle(self, request: Request, writer: asyncio.StreamWriter) -> None:
        await self._trickle(writer, "image/png")

    async def _result_gzip_bomb(self, request: Request, writer: asyncio.StreamWriter) -> None:
        await self._endless(writer, "200 OK", "Content-Type: image/png\r\n"
                            "Content-Encoding: gzip\r\n", *bomb_unit(1))

    async def _result_endless_503(self, request: Request, writer: asyncio.StreamWriter) -> None:
        await self._endless(writer, "503 Service Unavailable",
                            "Content-Type: text/html\r\nRetry-After: 0\r\n", b"",
                            b"<p>busy</p>" * 10_000)

    async def _result_endless_redirect(self, request: Request,
                                       writer: asyncio.StreamWriter) -> None:
        await self._endless(writer, "302 Found", "Location: /results/t1/again.png\r\n"
                            "Content-Type: text/html\r\n", b"", b"<p>moved</p>" * 10_000)
