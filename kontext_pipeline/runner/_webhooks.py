"""Receiving the results the API pushes (webhooks): a small HTTP server inside the runner.

Each submit carries the run's public ``--webhook-url`` and a secret made for the run; the API
posts the task's status there when it ends. A notification counts only if it is signed with
that secret, in either form BFL documents, compared in constant time:

* ``X-BFL-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>`` proves the body: the status
  it carries is used as is, and the task needs no poll;
* ``X-Webhook-Secret: <secret>`` proves only that the sender knows the secret, not the body:
  it is a hint, and the task polls the API at once (the status then comes from the API).

A notification that is unsigned, mis-signed, too large or not JSON is refused (401, 413, 400)
and reported without any secret or signature in the words. The server (:mod:`listener`) is
bounded in connections, bytes and time, and what it refuses is reported rate-limited, with a
count at the end, so that a flood costs neither descriptors nor pages of output. Polling goes
on at a low rate all the same, in case a notification never comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from kontext_pipeline.errors import UsageError
from kontext_pipeline.providers._inbox import Webhook
from kontext_pipeline.providers.bfl._signing import body_is_proven, verify
from kontext_pipeline.runner._listener import Limits, Listener, Request

__all__ = [
    "LIMITS",
    "MAX_NOTIFICATION_BYTES",
    "Warnings",
    "WebhookReceiver",
    "check_url",
    "parse_listen",
    "receiving",
]

MAX_NOTIFICATION_BYTES = 1_000_000
LIMITS = Limits(connections=64, header_timeout=10.0, body_timeout=10.0, header_bytes=16_384,
                body_bytes=MAX_NOTIFICATION_BYTES)
"""What one client may take of the receiver (BFL posts a small JSON body, all at once)."""
_MAX_URL = 2083  # BFL's limit on webhook_url
_MAX_TASK_ID = 200  # BFL's are UUIDs
class Warnings:
    """Warning lines, rate-limited: the first ``burst`` are shown, then about one each
    ``every`` seconds; the rest are counted in :attr:`held`, for a summary."""

    def __init__(self, note: Callable[[str], None], *, burst: int = 5, every: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.note = note
        self.burst = burst
        self.every = every
        self.held = 0
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def warn(self, line: str) -> None:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) / self.every)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self.note(line)
        else:
            self.held += 1


class WebhookReceiver:
    """Answers the notifications for ``webhook`` (a POST to any path): an HMAC-signed one goes
    to its task's inbox as the task's status; one signed with the secret header only makes the
    task poll now (the status then comes from the API itself); the rest are refused."""

    def __init__(self, webhook: Webhook, warnings: Warnings) -> None:
        self.webhook = webhook
        self.warnings = warnings
        self.accepted = 0
        self.hinted = 0
        self.refused = 0

    def __call__(self, request: Request) -> tuple[int, bytes]:
        status, answer = self._answer(request)
        return status, json.dumps(answer).encode()

    def _answer(self, request: Request) -> tuple[int, dict[str, Any]]:
        if request.method != "POST":
            return 405, {"detail": "notifications are POSTed"}
        body = request.body
        if body is None:
            return self._refuse(413, request.sender, "it is larger than "
                                f"{MAX_NOTIFICATION_BYTES} bytes")
        wrong = verify(self.webhook.secret, body, request.headers)
        if wrong is not None:
            return self._refuse(401, request.sender, wrong)
        try:
            payload = json.loads(body)
            task_id = payload.get("id") or payload.get("task_id")
        except (ValueError, RecursionError, AttributeError):
            return self._refuse(400, request.sender, "it is not a JSON object")
        if not isinstance(task_id, str) or not task_id or len(task_id) > _MAX_TASK_ID:
            return self._refuse(400, request.sender, "it names no task id")
        if body_is_proven(request.headers):
            self.webhook.inbox.deliver(task_id, payload)
            self.accepted += 1
        else:
            self.webhook.inbox.hint(task_id)
            self.hinted += 1
        return 200, {"received": task_id}

    def _refuse(self, status: int, sender: str, why: str) -> tuple[int, dict[str, Any]]:
        self.refused += 1
        self.warnings.warn(f"webhook: refused a notification from {sender}: {why}")
        return status, {"detail": f"refused: {why}"}


def check_url(url: str) -> str:
    """``url`` if the API can post to it (http or https, a host, at most 2083 characters)."""
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    if scheme not in ("http", "https") or not host or len(url) > _MAX_URL:
        raise UsageError(f"--webhook-url {_quoted(url)} is not an http(s) URL the API can post to "
                         f"(at most {_MAX_URL} characters)")
    return url


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as a pair; a UsageError says what is wrong.
    Only ASCII is taken: ``int()`` reads other scripts' digits (fullwidth, Arabic-Indic) and
    name lookup folds some of them, so they would listen somewhere other than written."""
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:  # IPv6 without brackets: where the port starts is a guess
        host = ""
    wrong = f"--webhook-listen {_quoted(value)} is not HOST:PORT (for example 0.0.0.0:8080)"
    if not (value.isascii() and value.isprintable()) or any(c.isspace() for c in value):
        raise UsageError(f"{wrong}: write it in plain ASCII letters and digits")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(wrong)
    return host, int(port)


def _quoted(value: str) -> str:
    """``value`` in quotes, with what would not print plainly escaped."""
    if value.isprintable():
        return f"'{value}'"
    return "'" + value.encode("unicode_escape").decode("ascii") + "'"


@contextlib.asynccontextmanager
async def receiving(webhook: Webhook, listen: str, note: Callable[[str], None], *,
                    limits: Limits = LIMITS) -> AsyncIterator[WebhookReceiver]:
    """Receive notifications for ``webhook`` on ``listen`` (HOST:PORT) for the duration of the
    block, within ``limits``; warnings go to ``note``, rate-limited, with a summary at the end
    if some were held back."""
    host, port = parse_listen(listen)
    try:
        sock = socket.create_server((host, port), family=_family(host), reuse_port=False)
    except OSError as exc:
        reason = (os.strerror(exc.errno) if exc.errno and exc.errno > 0  # a system error
                  else exc.strerror or str(exc))  # a name lookup's (gaierror)
        raise UsageError(f"cannot listen for webhooks on {listen}: {reason}; choose another "
                         "--webhook-listen") from exc
    warnings = Warnings(note)
    receiver = WebhookReceiver(webhook, warnings)
    listener = Listener(sock, receiver, limits, lambda line: warnings.warn(f"webhook: {line}"))
    serving = asyncio.ensure_future(listener.serve())
    try:
        yield receiver
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        await listener.aclose()
        sock.close()
        if warnings.held:
            note(_summary(receiver, listener, warnings))


def _summary(receiver: WebhookReceiver, listener: Listener, warnings: Warnings) -> str:
    counts = [(receiver.refused, "notifications refused"),
              (listener.turned_away, "connections closed at once (more than "
                                     f"{listener.limits.connections} open)"),
              (listener.cut_off, "slow connections cut off"),
              (listener.malformed, "connections closed for sending no HTTP/1.1 request"),
              (listener.accept_failures, "connections not accepted (out of descriptors)")]
    told = ", ".join(f"{count} {what}" for count, what in counts if count)
    return f"webhook: in all, {told}; {warnings.held} of these warnings were not shown"


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
