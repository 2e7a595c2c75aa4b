"""The webhook receiver against clients that hold on: slow ones are cut off, connections beyond
the limit are closed at once, what is not HTTP is closed, and a flood of idle connections
leaves the run its descriptors (the run has a process of its own with few of them, as a small
container has, so that a receiver that takes every connection runs out)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import resource
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest

from kontext_pipeline.providers._inbox import Pushed, Webhook
from kontext_pipeline.providers.bfl._signing import signature
from kontext_pipeline.runner._listener import Listener
from kontext_pipeline.runner._webhooks import LIMITS, receiving
from kontext_pipeline.server._run import BackgroundServer
from tests.bfl_helpers import KEY
from tests.conftest import Start, WriteRecipe
from tests.test_webhooks import BODY, SECRET, free_port, pushed

FLOOD = 1100  # idle connections
RUN_DESCRIPTORS = 256  # RLIMIT_NOFILE of the run
RECIPE = """
    version: 1
    name: flooded
    inputs: {photo: photo.png}
    matrix:
      n: [1, 2, 3]
    steps:
      - {id: paint, image: photo, prompt: "Paint {{ n }} stripes"}
    outputs:
      paint: paint
"""
LIMITED = ("import os, resource, sys; "
           "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[1]))); "
           "os.execv(sys.executable, [sys.executable, '-m', 'kontext_pipeline', *sys.argv[2:]])")


async def closed_by_the_receiver(port: int, first: bytes, trickle: bytes) -> bytes:
    """Send ``first``, then ``trickle`` a byte at a time every 0.05 s, until the receiver
    closes the connection; what it answered (b"": nothing)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(first)

    async def dribble() -> None:
        for byte in trickle:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)

    dribbling = asyncio.ensure_future(dribble())
    try:
        return await asyncio.wait_for(reader.read(), timeout=60)  # closed: not how soon
    except ConnectionResetError:
        return b""
    finally:
        dribbling.cancel()
        writer.close()


def test_a_slow_client_is_cut_off() -> None:
    """A client that trickles its headers, or its body, a byte now and then is cut off."""
    webhook = Webhook("https://hooks.example/run", secret=SECRET)
    notes: list[str] = []
    limits = replace(LIMITS, header_timeout=0.5, body_timeout=0.5)
    headers = b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"

    async def go() -> tuple[bytes, bytes, int]:
        port = free_port()
        async with receiving(webhook, f"127.0.0.1:{port}", notes.append, limits=limits):
            slow_headers = await closed_by_the_receiver(port, b"P", headers[1:] * 100)
            slow_body = await closed_by_the_receiver(port, headers, b"{" * 100_000)
            async with httpx.AsyncClient() as client:  # and it still answers
                answer = await client.post(f"http://127.0.0.1:{port}/hook", content=BODY,
                                           headers={"x-bfl-signature": signature(SECRET, BODY)})
        return slow_headers, slow_body, answer.status_code

    assert asyncio.run(go()) == (b"", b"", 200)
    assert notes == [
        "webhook: cut off a connection from 127.0.0.1: it did not send its headers within 0.5 s",
        "webhook: cut off a connection from 127.0.0.1: it did not send its body within 0.5 s"]


def test_connections_beyond_the_limit_are_closed_at_once() -> None:
    webhook = Webhook("https://hooks.example/run", secret=SECRET)
    notes: list[str] = []
    limits = replace(LIMITS, connections=4, header_timeout=600.0)
    signed = {"x-bfl-signature": signature(SECRET, BODY)}

    async def go() -> tuple[list[bytes], int]:
        port = free_port()
        async with receiving(webhook, f"127.0.0.1:{port}", notes.append, limits=limits):
            idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
            extra = [await closed_by_the_receiver(port, b"", b"") for _ in range(20)]
            for _reader, writer in idle:  # the idle ones go: the receiver takes posts again
                writer.close()
            async with httpx.AsyncClient() as client:
                for _ in range(600):
                    with contextlib.suppress(httpx.TransportError):
                        answer = await client.post(f"http://127.0.0.1:{port}/hook",
                                                   content=BODY, headers=signed)
                        return extra, answer.status_code
                    await asyncio.sleep(0.05)
        raise AssertionError("the receiver never took a post again")

    assert asyncio.run(go()) == ([b""] * 20, 200)
    closed = "webhook: closed a connection from 127.0.0.1 at once: 4 are open, the most allowed"
    shown = [line for line in notes if line == closed]
    assert 1 <= len(shown) <= 10
    summary = re.fullmatch(r"webhook: in all, (\d+) connections closed at once \(more than 4 "
                           r"open\); (\d+) of these warnings were not shown", notes[-1])
    assert summary, notes[-1]
    closed_in_all, held = int(summary[1]), int(summary[2])
    assert closed_in_all >= 20  # and any post that came before the idle ones were gone
    assert len(shown) + held == closed_in_all
    assert len(notes) == len(shown) + 1
    assert pushed(webhook.inbox, "t1") == Pushed(json.loads(BODY))


def test_the_receiver_speaks_plain_http_and_closes_on_anything_else() -> None:
    webhook = Webhook("https://hooks.example/run", secret=SECRET)
    notes: list[str] = []
    signed = f"x-bfl-signature: {signature(SECRET, BODY)}\r\n".encode()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY)
    requests = [
        b"POST /hook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n" + signed + b"\r\n"
        + chunked,
        b"HEAD /hook HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x1b[2J not HTTP\r\n\r\n",  # TLS, or junk
        b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"]

    async def go() -> list[bytes]:
        port = free_port()
        async with receiving(webhook, f"127.0.0.1:{port}", notes.append):
            return [(await closed_by_the_receiver(port, request, b"")).split(b"\r\n")[0]
                    for request in requests]

    assert asyncio.run(go()) == [b"HTTP/1.1 200 OK", b"HTTP/1.1 405 Method Not Allowed", b"",
                                 b""]
    assert notes == ["webhook: closed a connection from 127.0.0.1: it sent no HTTP/1.1 request "
                     "the receiver takes"] * 2
    assert pushed(webhook.inbox, "t1") == Pushed(json.loads(BODY))


@pytest.fixture
def many_descriptors() -> Iterator[None]:
    """Enough descriptors in this process to hold the flood's connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = FLOOD + 300
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"needs {need} open files (ulimit -Hn is {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def flood(server: BackgroundServer, port: int, stop: threading.Event) -> list[socket.socket]:
    """Once the server has a task, open FLOOD connections to ``port`` and send nothing."""
    while not server.state.tasks and not stop.wait(0.01):
        pass
    opened: list[socket.socket] = []
    for _ in range(FLOOD):
        if stop.is_set():
            break
        try:
            opened.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        except OSError:
            continue  # refused or timed out: a flood does not care
    return opened


def test_a_flood_of_idle_connections_does_not_sink_the_run(
        many_descriptors: None, bfl_server: Start,
        write_recipe: WriteRecipe) -> None:
    recipe = write_recipe(RECIPE)
    work = recipe.parent
    server = bfl_server(latency=12.0)  # done after the flood's first connections are cut off
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", LIMITED, str(RUN_DESCRIPTORS), "run", str(recipe), "--api-base",
         server.url, "--cache-dir", str(work / "cache"), "--out", str(work / "out"),
         "--webhook-url", f"http://127.0.0.1:{port}/hook", "--webhook-listen",
         f"127.0.0.1:{port}"],
        env={"BFL_API_KEY": KEY, "PATH": "/usr/bin:/bin",
             "XDG_CACHE_HOME": os.environ["XDG_CACHE_HOME"],
             "XDG_STATE_HOME": os.environ["XDG_STATE_HOME"]}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    stop = threading.Event()
    held: list[socket.socket] = []
    flooding = threading.Thread(target=lambda: held.extend(flood(server, port, stop)))
    flooding.start()
    try:
        stdout, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
        stop.set()
        flooding.join()
        for connection in held:
            connection.close()
    assert len(held) > RUN_DESCRIPTORS  # the flood was more than the run could have held
    assert process.returncode == 0, stderr[-5000:]
    assert "Traceback" not in stderr
    assert "Too many open files" not in stderr
    lines = [line for line in stderr.splitlines() if "webhook" in line]
    assert len(lines) <= 15, lines
    assert re.fullmatch(r"warning: webhook: in all, \d+ connections closed at once \(more than "
                        r"64 open\)(, \d+ slow connections cut off)?; \d+ of these warnings "
                        r"were not shown", lines[-1]), lines[-1]
    assert stdout.startswith("flooded: 3 steps, 0 cached, 3 made")


def test_a_failed_accept_pauses_instead_of_failing() -> None:
    """accept() failing (out of descriptors, here a socket that does not listen) is told once
    a try, and accepting goes on."""
    told: list[str] = []

    async def go() -> int:
        told_once = asyncio.Event()

        def trouble(line: str) -> None:
            told.append(line)
            told_once.set()

        with socket.socket() as deaf:
            deaf.bind(("127.0.0.1", 0))  # no listen(): accept() fails with EINVAL
            listener = Listener(deaf, lambda _request: (200, b"{}"), LIMITS, trouble)
            serving = asyncio.ensure_future(listener.serve())
            await asyncio.wait_for(told_once.wait(), timeout=60)
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
            return listener.accept_failures

    assert asyncio.run(go()) >= 1
    assert set(told) == {"cannot accept a connection (Invalid argument); trying again shortly"}
