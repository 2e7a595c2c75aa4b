"""The bundled server posts webhooks to loopback addresses only, unless it was started to allow
more; a host is resolved once, every address it resolves to is checked, and the delivery goes
to the checked address. Nothing here sends traffic anywhere but 127.0.0.1: refused targets are
refused before any connection, and other names resolve through a resolver the test gives."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from kontext_pipeline.server import ServerConfig, ServerState, create_app
from kontext_pipeline.server._targets import Resolver, allowed_host
from tests.bfl_helpers import run
from tests.conftest import RunCli

KEY = {"x-key": "bfl_anything"}


class FakeResolver:
    """Resolves names as told, answer after answer; records what it was asked."""

    def __init__(self, **answers: Sequence[Sequence[str]]) -> None:
        self.answers = {name.replace("_", "."): list(a) for name, a in answers.items()}
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.asked.append((host, port))
        if not self.answers.get(host):
            raise OSError(f"no such host: {host}")
        return self.answers[host].pop(0)


def submit(config: ServerConfig, body: dict[str, Any], *, resolve: Resolver | None = None,
           wait_for_webhooks: int = 0, settle: float = 0.0) -> tuple[ServerState, httpx.Response]:
    """Submit ``body`` in-process; then wait until that many webhooks were attempted (at most
    10 s), or ``settle`` seconds, with the app's event loop running."""
    state = ServerState(config)
    app = create_app(state=state, resolve=resolve) if resolve else create_app(state=state)

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            answer = await client.post("/v1/flux-kontext-pro", json=body, headers=KEY)
        deadline = time.monotonic() + 10
        while len(state.webhooks) < wait_for_webhooks and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(settle)
        return answer

    return state, run(go())


def refusal(msg: str, url: str) -> dict[str, Any]:
    return {"detail": [{"type": "value_error", "loc": ["body", "webhook_url"], "msg": msg,
                        "input": url}]}


class Receiver:
    """A webhook receiver on 127.0.0.1: what arrived (each request's Host header and path)."""

    def __init__(self) -> None:
        received: list[tuple[str, str]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["content-length"]))
                received.append((self.headers["host"], self.path))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    served = Receiver()
    served.thread.start()
    yield served
    served.server.shutdown()
    served.server.server_close()


LOOPBACK_ONLY = ("Value error, this server delivers webhooks only to loopback addresses, not to "
                 "{address}{which}; start it with --allow-webhook-host {host} or "
                 "--webhooks-anywhere to allow more")


def test_a_webhook_to_another_address_is_refused_before_any_connection() -> None:
    resolver = FakeResolver()
    url = "http://192.0.2.1:8080/hook"  # TEST-NET-1: never connected to
    state, answer = submit(ServerConfig(latency=0), {"prompt": "x", "webhook_url": url},
                           resolve=resolver, settle=0.3)
    assert (answer.status_code, answer.json()) == (422, refusal(LOOPBACK_ONLY.format(
        address="192.0.2.1", which="", host="192.0.2.1"), url))
    assert state.tasks == {}
    assert state.webhooks == []  # every attempt, failed or not, would be recorded
    assert resolver.asked == []  # an address needs no resolving


def test_every_address_a_name_resolves_to_is_checked() -> None:
    resolver = FakeResolver(hooks_test=[["127.0.0.1", "192.0.2.7"]])
    url = "http://hooks.test:9/hook"
    state, answer = submit(ServerConfig(latency=0), {"prompt": "x", "webhook_url": url},
                           resolve=resolver)
    assert (answer.status_code, answer.json()) == (422, refusal(LOOPBACK_ONLY.format(
        address="192.0.2.7", which=" (which hooks.test resolves to)", host="hooks.test"), url))
    assert state.tasks == {}
    assert resolver.asked == [("hooks.test", 9)]


@pytest.mark.parametrize(("url", "msg"), [
    ("ftp://127.0.0.1/hook", "Value error, webhook_url must be an http or https URL with a host "
                             "(and a port from 1 to 65535)"),
    ("http://127.0.0.1:0/hook", "Value error, webhook_url must be an http or https URL with a "
                                "host (and a port from 1 to 65535)"),
    ("http://nowhere.test/hook", "Value error, webhook_url host nowhere.test could not be "
                                 "resolved"),
])
def test_a_webhook_url_nothing_can_be_posted_to_is_refused(url: str, msg: str) -> None:
    state, answer = submit(ServerConfig(latency=0), {"prompt": "x", "webhook_url": url},
                           resolve=FakeResolver())
    assert (answer.status_code, answer.json()) == (422, refusal(msg, url))
    assert state.tasks == {}


def test_the_delivery_goes_to_the_checked_address_not_to_a_second_lookup(
        receiver: Receiver) -> None:
    # the name resolves to loopback when checked, then elsewhere (DNS rebinding)
    resolver = FakeResolver(hooks_test=[["127.0.0.1"], ["192.0.2.9"]])
    url = f"http://hooks.test:{receiver.port}/hook"
    state, answer = submit(ServerConfig(latency=0), {"prompt": "x", "webhook_url": url,
                                                     "webhook_secret": "s"},
                           resolve=resolver, wait_for_webhooks=1)
    assert answer.status_code == 200
    assert [(d.task_id, d.status) for d in state.webhooks] == [(answer.json()["id"], 200)]
    assert receiver.received == [(f"hooks.test:{receiver.port}", "/hook")]
    assert resolver.asked == [("hooks.test", receiver.port)]


def test_loopback_names_and_addresses_are_delivered_to(receiver: Receiver) -> None:
    for host in ("127.0.0.1", "localhost"):
        url = f"http://{host}:{receiver.port}/{host}"
        resolver = FakeResolver(localhost=[["127.0.0.1", "::1"]])
        state, answer = submit(ServerConfig(latency=0), {"prompt": "x", "webhook_url": url},
                               resolve=resolver, wait_for_webhooks=1)
        assert answer.status_code == 200
        assert [d.status for d in state.webhooks] == [200]
    assert [path for _, path in receiver.received] == ["/127.0.0.1", "/localhost"]


@pytest.mark.parametrize("config", [
    ServerConfig(latency=0, webhook_hosts=frozenset({"hooks.test"})),
    ServerConfig(latency=0, webhooks_anywhere=True)])
def test_a_server_started_to_allow_more_accepts_them(config: ServerConfig) -> None:
    # [[never]]: the task never ends, so nothing is ever posted to 192.0.2.1
    resolver = FakeResolver(hooks_test=[["192.0.2.1"]])
    state, answer = submit(config, {"prompt": "x [[never]]",
                                    "webhook_url": "https://HOOKS.test/hook"},
                           resolve=resolver, settle=0.1)
    assert answer.status_code == 200
    assert len(state.tasks) == 1
    assert state.webhooks == []


@pytest.mark.parametrize(("value", "host"), [
    ("Hooks.Example", "hooks.example"), ("[::1]", "::1"), ("192.0.2.1", "192.0.2.1"),
    ("bücher.example", "xn--bcher-kva.example"), ("hooks.example:80", None),
    ("http://hooks.example", None), ("a b", None), ("", None)])
def test_allowed_hosts_are_written_as_urls_write_them(value: str, host: str | None) -> None:
    assert allowed_host(value) == host


@pytest.mark.parametrize("value", ["http://hooks.example", "hooks.example/x", "a b"])
def test_serve_refuses_an_allowed_host_that_is_not_one(run_cli: RunCli, value: str) -> None:
    result = run_cli("serve", "--allow-webhook-host", value)
    assert result.exit_code == 2
    assert result.stderr == (f"kontext-pipeline: --allow-webhook-host {value!r}: give a host "
                             "name or an IP address, with no scheme, port or path\n")
