"""Reading an answer within bounds: its body up to a size counted after decompression, and the
whole exchange within a deadline.

httpx's own decoding inflates each chunk it receives in one go (64 KB of gzip can hold 64 MB,
and ``Content-Encoding: gzip, gzip`` a thousand times more), and its timeouts bound each read,
not the exchange: a server sending a byte every 20 s would hold a request for ever. So bodies
are read raw and inflated here a bounded piece at a time, and every exchange runs under
:func:`within`.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import TypeVar

import httpx

from kontext_pipeline._support.timeouts import within

__all__ = ["MAX_ANSWER_BYTES", "BodyError", "read_body", "with_body", "within"]

MAX_ANSWER_BYTES = 1_000_000
"""The most an answer's JSON or error body may hold (BFL's are well under 10 kB)."""

_PIECE = 64 * 1024
"""The most one inflation step produces."""
_MAX_LAYERS = 2
"""The most encodings one body may be wrapped in."""

T = TypeVar("T")


class BodyError(Exception):
    """An answer's body that is not read: too large, or encoded in a way not asked for."""



async def read_body(response: httpx.Response, limit: int) -> bytes:
    """The body of a streamed ``response``, decoded, refusing more than ``limit`` bytes once
    decoded (:class:`BodyError`): reading stops at the bound, whatever the body holds."""
    decoder = _decoder(response.headers.get_list("content-encoding", split_commas=True))
    pieces: list[bytes] = []
    size = 0
    try:
        async for raw in response.aiter_raw():
            for piece in decoder.feed(raw):
                size += len(piece)
                if size > limit:
                    raise BodyError(f"is over {_amount(limit)}")
                pieces.append(piece)
    except httpx.StreamConsumed:  # an in-process transport's answer, already in memory
        pieces, size = [response.content], len(response.content)
        if size > limit:
            raise BodyError(f"is over {_amount(limit)}") from None
    return b"".join(pieces)


def with_body(response: httpx.Response, body: bytes) -> httpx.Response:
    """An answer like ``response`` (status, headers) holding ``body``, already decoded."""
    headers = [(k, v) for k, v in response.headers.multi_items()
               if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")]
    return httpx.Response(response.status_code, headers=headers, content=body,
                          request=response.request)


def _amount(limit: int) -> str:
    return f"{limit / 1e6:g} MB" if limit >= 1_000_000 else f"{limit} bytes"


class _Inflater:
    """One ``gzip`` or ``deflate`` layer, producing at most :data:`_PIECE` bytes a step."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        # gzip: its header; deflate: zlib's header, else (as some servers send it) raw
        self._inflate = zlib.decompressobj(zlib.MAX_WBITS | 16 if encoding == "gzip"
                                           else zlib.MAX_WBITS)
        self._started = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        while not self._inflate.eof:
            try:
                piece = self._inflate.decompress(data, _PIECE)
            except zlib.error as exc:
                if self.encoding == "deflate" and not self._started:
                    self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)
                    self._started = True
                    continue
                raise BodyError(f"has a damaged {self.encoding} encoding ({exc})") from exc
            self._started = True
            data = self._inflate.unconsumed_tail
            if piece:
                yield piece
            if not data and len(piece) < _PIECE:  # all in, all out
                return


class _Decoder:
    """The layers of a ``Content-Encoding``, undone in reverse order of their application."""

    def __init__(self, layers: list[_Inflater]) -> None:
        self._layers = layers

    def feed(self, data: bytes, depth: int = 0) -> Iterator[bytes]:
        if depth == len(self._layers):
            yield data
            return
        for piece in self._layers[depth].feed(data):
            yield from self.feed(piece, depth + 1)


def _decoder(encodings: list[str]) -> _Decoder:
    names = [e.strip().lower() for e in encodings]
    names = [name for name in names if name not in ("", "identity")]
    for name in names:
        if name not in ("gzip", "x-gzip", "deflate"):
            raise BodyError(f"is encoded as {name[:40]!r}, which was not asked for")
    if len(names) > _MAX_LAYERS:
        raise BodyError(f"is encoded {len(names)} times over")
    return _Decoder([_Inflater("gzip" if name == "x-gzip" else name)
                     for name in reversed(names)])
