"""Receiving the results the API pushes (webhooks): a small HTTP server inside the runner.

Each submit carries the run's public ``--webhook-url`` and a secret made for the run; the API
posts the task's result there when it is done. A notification counts only if it is signed with
that secret, in either form BFL documents:

* ``X-BFL-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>``, or
* ``X-Webhook-Secret: <secret>``.

Both are compared in constant time. A notification that is unsigned, mis-signed, too large or
not JSON is refused (401, 413, 400) and reported without any secret or signature in the words;
a verified one goes to the inbox of the task it names, which then needs no poll. Polling goes on
at a low rate all the same, in case a notification never comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from kontext_pipeline.errors import UsageError
from kontext_pipeline.providers.inbox import Webhook

__all__ = [
    "MAX_NOTIFICATION_BYTES",
    "WebhookReceiver",
    "check_url",
    "parse_listen",
    "receiving",
    "signature",
    "verify",
]

MAX_NOTIFICATION_BYTES = 1_000_000
_MAX_URL = 2083  # BFL's limit on webhook_url
SIGNATURE_HEADER = "x-bfl-signature"
SECRET_HEADER = "x-webhook-secret"  # noqa: S105  (a header name, not a secret)


def signature(secret: str, body: bytes) -> str:
    """The ``X-BFL-Signature`` value that ``secret`` gives ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, headers: Mapping[str, str]) -> str | None:
    """None if ``body`` is signed with ``secret`` (either form), else what is wrong with it."""
    signed = headers.get(SIGNATURE_HEADER)
    if signed is not None:
        given = signed.strip()
        expected = signature(secret, body)
        if not given.startswith("sha256="):
            expected = expected.removeprefix("sha256=")
        ok = hmac.compare_digest(given.encode("latin-1", "replace"), expected.encode())
        return None if ok else f"its {SIGNATURE_HEADER} does not match"
    raw = headers.get(SECRET_HEADER)
    if raw is not None:
        ok = hmac.compare_digest(raw.encode("latin-1", "replace"), secret.encode())
        return None if ok else f"its {SECRET_HEADER} does not match"
    return f"it is not signed (no {SIGNATURE_HEADER} or {SECRET_HEADER} header)"


class WebhookReceiver:
    """The ASGI app that takes notifications for ``webhook`` (a POST to any path)."""

    def __init__(self, webhook: Webhook, on_refused: Callable[[str], None]) -> None:
        self.webhook = webhook
        self.on_refused = on_refused
        self.accepted = 0
        self.refused = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        status, answer = await self._answer(scope, receive)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps(answer).encode()})

    async def _answer(self, scope: Any, receive: Any) -> tuple[int, dict[str, Any]]:
        if scope["method"] != "POST":
            return 405, {"detail": "notifications are POSTed"}
        client = scope.get("client")
        sender = client[0] if client else "an unknown address"
        body = await _read_body(receive, MAX_NOTIFICATION_BYTES)
        if body is None:
            return self._refuse(413, sender, "it is larger than "
                                f"{MAX_NOTIFICATION_BYTES} bytes")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope["headers"]}
        wrong = verify(self.webhook.secret, body, headers)
        if wrong is not None:
            return self._refuse(401, sender, wrong)
        try:
            payload = json.loads(body)
            task_id = payload.get("id") or payload.get("task_id")
        except (ValueError, AttributeError):
            return self._refuse(400, sender, "it is not a JSON object")
        if not isinstance(task_id, str) or not task_id:
            return self._refuse(400, sender, "it names no task id")
        self.webhook.inbox.deliver(task_id, payload)
        self.accepted += 1
        return 200, {"received": task_id}

    def _refuse(self, status: int, sender: str, why: str) -> tuple[int, dict[str, Any]]:
        self.refused += 1
        self.on_refused(f"webhook: refused a notification from {sender}: {why}")
        return status, {"detail": f"refused: {why}"}


async def _read_body(receive: Any, limit: int) -> bytes | None:
    """The request's body, or None once it passes ``limit`` bytes."""
    parts, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def check_url(url: str) -> str:
    """``url`` if the API can post to it (http or https, a host, at most 2083 characters)."""
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    if scheme not in ("http", "https") or not host or len(url) > _MAX_URL:
        raise UsageError(f"--webhook-url '{url}' is not an http(s) URL the API can post to "
                         f"(at most {_MAX_URL} characters)")
    return url


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as a pair; a UsageError says what is wrong."""
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--webhook-listen '{value}' is not HOST:PORT (for example "
                         "0.0.0.0:8080)")
    return host, int(port)


@contextlib.asynccontextmanager
async def receiving(webhook: Webhook, listen: str,
                    on_refused: Callable[[str], None]) -> AsyncIterator[WebhookReceiver]:
    """Serve :class:`WebhookReceiver` on ``listen`` (HOST:PORT) for the duration of the block."""
    import uvicorn  # noqa: PLC0415  (only webhook runs need the server stack)

    host, port = parse_listen(listen)
    try:
        sock = socket.create_server((host, port), family=_family(host), reuse_port=False)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise UsageError(f"cannot listen for webhooks on {listen}: {reason}; choose another "
                         "--webhook-listen") from exc
    receiver = WebhookReceiver(webhook, on_refused)

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Any:  # the run handles Ctrl-C and SIGTERM itself
            yield

    server = _Server(uvicorn.Config(receiver, log_level="critical", access_log=False,
                                    lifespan="off"))
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        while not server.started and not serving.done():
            await asyncio.sleep(0.01)
        yield receiver
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        sock.close()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
