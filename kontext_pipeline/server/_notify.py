"""Webhooks as BFL sends them: when a task that came with a ``webhook_url`` ends, its status
(the poll's body) is POSTed there, signed with the task's ``webhook_secret``.

How BFL signs is not firmly documented, so the server can send either documented form, or both:
``X-BFL-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>`` (``hmac``) or the raw secret in
``X-Webhook-Secret`` (``secret``). A delivery that fails is tried twice more, always to the
address checked when the task was submitted (see :mod:`kontext_pipeline.server._targets`), with
no proxy from the environment, no redirect followed and the answer's body left unread.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from kontext_pipeline.providers.bfl._signing import SECRET_HEADER, SIGNATURE_HEADER, signature
from kontext_pipeline.server._targets import WebhookTarget

__all__ = ["SIGNATURE_FORMS", "Delivery", "deliver"]

SIGNATURE_FORMS = ("hmac", "secret", "both")
_ATTEMPTS = 3


@dataclass(frozen=True)
class Delivery:
    """One webhook POST as the server made it: to which task, and the answer (0: none)."""

    task_id: str
    status: int


async def deliver(target: WebhookTarget, secret: str | None, payload: dict[str, Any], form: str,
                  record: Callable[[Delivery], None]) -> None:
    """POST ``payload`` to ``target``, signed in ``form``; retried on a failure, recorded."""
    body = json.dumps(payload).encode()
    headers = {"content-type": "application/json", "user-agent": "bfl-webhooks (local)",
               "host": target.host_header}
    extensions = {"sni_hostname": target.server_name} if target.server_name else {}
    if secret:
        if form in ("hmac", "both"):
            headers[SIGNATURE_HEADER] = signature(secret, body)
        if form in ("secret", "both"):
            headers[SECRET_HEADER] = secret
    for attempt in range(_ATTEMPTS):
        try:
            async with (httpx.AsyncClient(timeout=10.0, trust_env=False) as client,
                        client.stream("POST", target.request_url, content=body,
                                      headers=headers, extensions=extensions) as response):
                status = response.status_code  # the answer's body is never read
        except httpx.HTTPError:
            record(Delivery(str(payload.get("id")), 0))
        else:
            record(Delivery(str(payload.get("id")), status))
            if status < 500:
                return
        await asyncio.sleep(0.2 * 2 ** attempt)
