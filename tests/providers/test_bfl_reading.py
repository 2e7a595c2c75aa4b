"""Bodies read within bounds: decoded a bounded piece at a time, counted once decoded, and
refused when encoded in a way the client did not ask for."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import AsyncIterator

import httpx
import pytest

from kontext_pipeline.providers.bfl._reading import BodyError, read_body
from tests.bfl_helpers import run


class Chunks(httpx.AsyncByteStream):
    """A streamed body, as the network delivers it: in pieces, not read in advance."""

    def __init__(self, data: bytes, size: int = 1000) -> None:
        self.data, self.size = data, size

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), self.size):
            yield self.data[start:start + self.size]


def read(data: bytes, encoding: str | None, limit: int = 1_000_000) -> bytes:
    headers = {"content-encoding": encoding} if encoding else {}

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=headers, stream=Chunks(data))

    async def go() -> bytes:
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client, \
                client.stream("GET", "http://test/") as response:
            return await read_body(response, limit)

    return run(go())


def refusal(data: bytes, encoding: str | None, limit: int = 1_000_000) -> str:
    with pytest.raises(BodyError) as caught:
        read(data, encoding, limit)
    return str(caught.value)


BODY = b'{"id": "t1", "status": "Pending"}' * 300


@pytest.mark.parametrize(("encoded", "encoding"), [
    (BODY, None),
    (BODY, "identity"),
    (gzip.compress(BODY), "gzip"),
    (gzip.compress(BODY), "x-gzip"),
    (zlib.compress(BODY), "deflate"),
    (zlib.compress(BODY)[2:-4], "deflate"),  # raw deflate, as some servers send it
    (gzip.compress(gzip.compress(BODY)), "gzip, gzip"),
])
def test_encodings_asked_for_are_decoded(encoded: bytes, encoding: str | None) -> None:
    assert read(encoded, encoding) == BODY


def test_the_bound_counts_decoded_bytes() -> None:
    bomb = gzip.compress(b" " * 5_000_000)  # 5 kB on the wire
    assert len(bomb) < 10_000
    assert refusal(bomb, "gzip") == "is over 1 MB"
    assert refusal(b"x" * 2000, None, limit=1000) == "is over 1000 bytes"
    assert read(b"x" * 1000, None, limit=1000) == b"x" * 1000


@pytest.mark.parametrize(("encoded", "encoding", "message"), [
    (BODY, "br", "is encoded as 'br', which was not asked for"),
    (BODY, "gzip, zstd", "is encoded as 'zstd', which was not asked for"),
    (gzip.compress(gzip.compress(gzip.compress(BODY))), "gzip, gzip, gzip",
     "is encoded 3 times over"),
    (gzip.compress(BODY)[:10] + b"\xff" * 20, "gzip",
     "has a damaged gzip encoding (Error -3 while decompressing data: invalid block type)"),
])
def test_other_encodings_are_refused(encoded: bytes, encoding: str, message: str) -> None:
    assert refusal(encoded, encoding) == message


def test_an_answer_already_in_memory_is_bounded_too() -> None:
    """An in-process transport's answers arrive read: the bound still holds."""

    async def go() -> bytes:
        transport = httpx.MockTransport(lambda _: httpx.Response(200, content=b"x" * 2000))
        async with httpx.AsyncClient(transport=transport) as client, \
                client.stream("GET", "http://test/") as response:
            return await read_body(response, 1000)

    with pytest.raises(BodyError, match=r"^is over 1000 bytes$"):
        run(go())
