"""What a client sends the bundled server is input: the URLs it hands out come from its own
base (never the ``Host`` header), bodies and prompts are bounded, query parameters are checked
(4xx in BFL's shape, never a 500), and ``/_stats`` wants the key."""

from __future__ import annotations

import base64
import json
import math
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from kontext_pipeline.recipe._templating import MAX_PROMPT_CHARS as RECIPE_PROMPT_CHARS
from kontext_pipeline.server import ServerConfig, ServerState, create_app
from kontext_pipeline.server._limits import MAX_BODY_BYTES
from kontext_pipeline.server._validation import MAX_IMAGE_BYTES, MAX_PROMPT_CHARS
from tests.bfl_helpers import run
from tests.conftest import Start

KEY = {"x-key": "bfl_anything"}
BASE = "http://testserver"

def send(state: ServerState, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One request to a fresh in-process app over ``state`` (the key unless headers say)."""

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(state=state))
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            kwargs.setdefault("headers", KEY)
            return await client.request(method, path, **kwargs)

    return run(go())


# --- the URLs it hands out ---------------------------------------------------------------------

def test_polling_and_result_urls_ignore_a_forged_host_header_in_process() -> None:
    state = ServerState(ServerConfig(latency=0))
    forged = {**KEY, "host": "evil.example"}
    submit = send(state, "POST", "/v1/flux-kontext-pro", json={"prompt": "x"}, headers=forged)
    task_id = submit.json()["id"]
    assert submit.json()["polling_url"] == f"{BASE}/eu4/v1/get_result?id={task_id}"
    ready = send(state, "GET", f"/eu4/v1/get_result?id={task_id}", headers=forged).json()
    assert ready["result"]["sample"].startswith(f"{BASE}/delivery/{task_id}/sample.png?se=")


def test_urls_come_from_the_bound_address_over_http_whatever_the_host_header(
        bfl_server: Start) -> None:
    server = bfl_server(latency=0)
    forged = {**KEY, "host": "evil.example"}
    task = httpx.post(f"{server.url}/v1/flux-kontext-pro", json={"prompt": "x"},
                      headers=forged, timeout=10).json()
    assert task["polling_url"] == f"{server.url}/eu4/v1/get_result?id={task['id']}"
    ready = httpx.get(task["polling_url"], headers=forged, timeout=10).json()
    assert ready["status"] == "Ready"
    assert ready["result"]["sample"].startswith(f"{server.url}/delivery/{task['id']}/")
    assert "evil.example" not in json.dumps(ready)


def test_a_configured_public_url_is_the_base_of_every_url(bfl_server: Start) -> None:
    server = bfl_server(latency=0, public_url="https://bfl.test:8443/api")
    forged = {**KEY, "host": "evil.example", "x-forwarded-host": "evil.example"}
    task = httpx.post(f"{server.url}/v1/flux-kontext-pro", json={"prompt": "x"},
                      headers=forged, timeout=10).json()
    assert task["polling_url"] == f"https://bfl.test:8443/api/eu4/v1/get_result?id={task['id']}"
    ready = httpx.get(f"{server.url}/eu4/v1/get_result?id={task['id']}", headers=forged,
                      timeout=10).json()
    assert ready["result"]["sample"].startswith(
        f"https://bfl.test:8443/api/delivery/{task['id']}/sample.png?se=")


# --- bodies and prompts ------------------------------------------------------------------------

def test_the_body_limit_takes_four_images_at_the_apis_limit_and_not_much_more() -> None:
    largest_image = math.ceil(MAX_IMAGE_BYTES / 3) * 4  # base64
    assert 4 * largest_image + 6 * MAX_PROMPT_CHARS + 10_000 < MAX_BODY_BYTES < 128_000_000
    assert ServerConfig().max_body_bytes == MAX_BODY_BYTES


def test_a_body_declared_over_the_limit_is_refused_before_it_is_read(
        bfl_server: Start) -> None:
    server = bfl_server()
    head = (f"POST /v1/flux-kontext-pro HTTP/1.1\r\nHost: 127.0.0.1\r\nx-key: k\r\n"
            f"content-type: application/json\r\ncontent-length: {MAX_BODY_BYTES + 1}\r\n"
            "\r\n").encode()
    # the head and the body's first bytes, and nothing more: the rest is not waited for
    status, body = answer_to(server.port, head + b'{"prompt": "')
    assert status == b"HTTP/1.1 413 Request Entity Too Large"
    assert json.loads(body) == {
        "detail": f"Request body too large: at most {MAX_BODY_BYTES} bytes"}
    assert server.state.tasks == {}


def test_a_streamed_body_is_refused_once_over_the_limit_without_reading_the_rest() -> None:
    state = ServerState(ServerConfig(max_body_bytes=10_000))
    pulled: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        for _ in range(1000):
            pulled.append(1)
            yield b" " * 1000

    answer = send(state, "POST", "/v1/flux-kontext-pro", content=body())
    assert (answer.status_code, answer.json()) == (
        413, {"detail": "Request body too large: at most 10000 bytes"})
    assert len(pulled) <= 12  # ten chunks reach the limit, the next one passes it
    assert state.tasks == {}


def test_a_prompt_over_the_limit_is_refused_in_bfls_shape() -> None:
    assert MAX_PROMPT_CHARS >= RECIPE_PROMPT_CHARS  # whatever a recipe may render is taken
    state = ServerState(ServerConfig(latency=10))
    longest = send(state, "POST", "/v1/flux-kontext-pro", json={"prompt": "p" * MAX_PROMPT_CHARS})
    assert longest.status_code == 200
    over = send(state, "POST", "/v1/flux-kontext-pro",
                json={"prompt": "p" * (MAX_PROMPT_CHARS + 1)})
    assert (over.status_code, over.json()) == (422, {"detail": [{
        "type": "string_too_long", "loc": ["body", "prompt"],
        "msg": "String should have at most 10000 characters", "input": "p" * 77 + "..."}]})
    assert len(state.tasks) == 1


@pytest.mark.parametrize(("content", "why"), [
    (b'{"prompt": "x", "seed": NaN}', "NaN is not valid JSON"),
    (b'{"prompt": "x", "seed": -Infinity}', "-Infinity is not valid JSON"),
    (b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
])
def test_json_that_could_not_be_answered_is_refused_as_invalid(content: bytes, why: str) -> None:
    state = ServerState(ServerConfig())
    answer = send(state, "POST", "/v1/flux-kontext-pro", content=content)
    assert (answer.status_code, answer.json()) == (422, {"detail": [{
        "type": "json_invalid", "loc": ["body", 0], "msg": f"JSON decode error: {why}",
        "input": {}}]})


@pytest.mark.parametrize("secret", [7, "a\nb", "s" * 1025])
def test_a_webhook_secret_must_be_a_short_printable_string(secret: Any) -> None:
    answer = send(ServerState(ServerConfig()), "POST", "/v1/flux-kontext-pro",
                  json={"prompt": "x", "webhook_url": "http://127.0.0.1:9/hook",
                        "webhook_secret": secret})
    assert (answer.status_code, answer.json()) == (422, {"detail": [{
        "type": "string_type", "loc": ["body", "webhook_secret"],
        "msg": "Input should be a string of at most 1024 printable ASCII characters",
        "input": "(hidden)"}]})


# --- query parameters --------------------------------------------------------------------------

@pytest.mark.parametrize(("query", "error"), [
    ("", {"type": "missing", "loc": ["query", "id"], "msg": "Field required", "input": None}),
    ("?id=", {"type": "missing", "loc": ["query", "id"], "msg": "Field required",
              "input": None}),
    ("?id=" + "a" * 65, {"type": "string_too_long", "loc": ["query", "id"],
                         "msg": "String should have at most 64 characters", "input": "a" * 65}),
    ("?id=%ff%00", {"type": "string_pattern_mismatch", "loc": ["query", "id"],
                    "msg": "String should match pattern '^[A-Za-z0-9_-]+$'",
                    "input": "\ufffd\x00"}),
    ("?id=../x", {"type": "string_pattern_mismatch", "loc": ["query", "id"],
                  "msg": "String should match pattern '^[A-Za-z0-9_-]+$'", "input": "../x"}),
])
def test_a_malformed_poll_id_is_422_in_fastapis_shape(query: str, error: dict[str, Any]) -> None:
    for path in ("/v1/get_result", "/eu4/v1/get_result"):
        answer = send(ServerState(ServerConfig()), "GET", path + query)
        assert (answer.status_code, answer.json()) == (422, {"detail": [error]})


def test_a_well_formed_unknown_id_is_still_task_not_found() -> None:
    answer = send(ServerState(ServerConfig()), "GET", "/v1/get_result?id=f00-Ba_r")
    assert (answer.status_code, answer.json()["status"]) == (200, "Task not found")


@pytest.mark.parametrize("query", [
    "se=%C2%B2&sig=" + "0" * 64,  # a superscript two: str.isdigit() says yes, int() says no
    "se=" + "9" * 5000 + "&sig=" + "0" * 64,  # too long for int()
    "se=1&sig=%C3%A9",  # not ASCII: hmac.compare_digest() refuses to compare it
    "se=1",
])
def test_a_malformed_signed_url_is_refused_like_the_blob_store(query: str) -> None:
    state = ServerState(ServerConfig(latency=0))
    task_id = send(state, "POST", "/v1/flux-kontext-pro", json={"prompt": "x"}).json()["id"]
    send(state, "GET", f"/v1/get_result?id={task_id}")  # rendered by now
    answer = send(state, "GET", f"/delivery/{task_id}/sample.png?{query}", headers={})
    assert answer.status_code == 403
    assert answer.text == ('<?xml version="1.0" encoding="utf-8"?><Error><Code>'
                           "AuthenticationFailed</Code><Message>Signature did not match"
                           "</Message></Error>")


def answer_to(port: int, data: bytes) -> tuple[bytes, bytes]:
    """Send raw bytes to the server on ``port``; its answer's status line and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(data)
        answer = b""
        while not answer.endswith(b"}"):
            chunk = connection.recv(65536)
            if not chunk:
                break
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return status_line, rest.split(b"\r\n\r\n", 1)[-1]


def test_a_request_http_cannot_take_is_a_400_in_bfls_shape(bfl_server: Start) -> None:
    server = bfl_server()
    # a request line of 20 kB, still not ended: more than HTTP parsing buffers
    status, body = answer_to(server.port, b"GET /v1/get_result?id=" + b"a" * 20_000)
    assert status == b"HTTP/1.1 400 Bad Request"
    assert json.loads(body) == {"detail": "Invalid HTTP request received."}


# --- /_stats -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("headers", "status", "detail"), [
    ({}, 401, "Not authenticated: send your API key in the x-key header"),
    ({"x-key": "bfl_wrong"}, 403, "Invalid API key"),
])
def test_stats_want_the_key(headers: dict[str, str], status: int, detail: str) -> None:
    state = ServerState(ServerConfig(api_keys=frozenset({"bfl_right"})))
    answer = send(state, "GET", "/_stats", headers=headers)
    assert (answer.status_code, answer.json()) == (status, {"detail": detail})
    allowed = send(state, "GET", "/_stats", headers={"x-key": "bfl_right"})
    assert (allowed.status_code, allowed.json()["submits"]) == (200, 0)


def test_public_stats_answer_without_a_key() -> None:
    answer = send(ServerState(ServerConfig(public_stats=True)), "GET", "/_stats", headers={})
    assert (answer.status_code, answer.json()["polls"]) == (200, 0)


def test_an_eps_is_refused_in_bfls_shape_never_handed_to_ghostscript() -> None:
    """Pillow opens an EPS (and, where Ghostscript is installed, runs it to decode it): the
    server takes only the formats Pillow decodes itself."""
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n%%EOF\n"
    state = ServerState(ServerConfig(latency=10))
    answer = send(state, "POST", "/v1/flux-kontext-pro",
                  json={"prompt": "x", "input_image": base64.b64encode(eps).decode()})
    assert (answer.status_code, answer.json()) == (422, {"detail": [{
        "type": "value_error", "loc": ["body", "input_image"],
        "msg": "Value error, not a usable image: not a PNG, JPEG, WEBP, GIF, BMP or TIFF image",
        "input": ""}]})
    assert state.tasks == {}


def test_an_image_at_the_limit_fits_in_a_body() -> None:
    """The 413 never refuses what the API takes: a body of the largest image is read whole."""
    big = base64.b64encode(b"\0" * (MAX_IMAGE_BYTES + 1)).decode()
    answer = send(ServerState(ServerConfig()), "POST", "/v1/flux-kontext-pro",
                  json={"prompt": "x", "input_image": big})
    assert answer.status_code == 422  # read, then refused for what it is, not for its size
    assert answer.json()["detail"][0]["msg"] == "Value error, image larger than 20 MB"
