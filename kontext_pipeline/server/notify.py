"""Webhooks as BFL sends them: when a task that came with a ``webhook_url`` ends, its status
(the poll's body) is POSTed there, signed with the task's ``webhook_secret``.

How BFL signs is not firmly documented, so the server can send either documented form, or both:
``X-BFL-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>`` (``hmac``) or the raw secret in
``X-Webhook-Secret`` (``secret``). A delivery that fails is tried twice more.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from kontext_pipeline.webhooks import SECRET_HEADER, SIGNATURE_HEADER, signature

__all__ = ["SIGNATURE_FORMS", "Delivery", "deliver"]

SIGNATURE_FORMS = ("hmac", "secret", "both")
_ATTEMPTS = 3


@dataclass(frozen=True)
class Delivery:
    """One webhook POST as the server made it: to which task, and the answer (0: none)."""

    task_id: str
    status: int


async def deliver(url: str, secret: str | None, payload: dict[str, Any], form: str,
                  record: Callable[[Delivery], None]) -> None:
    """POST ``payload`` to ``url``, signed in ``form``; retried on a failure, recorded."""
    body = json.dumps(payload).encode()
    headers = {"content-type": "application/json", "user-agent": "bfl-webhooks (local)"}
    if secret:
        if form in ("hmac", "both"):
            headers[SIGNATURE_HEADER] = signature(secret, body)
        if form in ("secret", "both"):
            headers[SECRET_HEADER] = secret
    for attempt in range(_ATTEMPTS):
        try:
            async with httpx.AsyncClient(timeout=10.0) as client:
                response = await client.post(url, content=body, headers=headers)
        except httpx.HTTPError:
            record(Delivery(str(payload.get("id")), 0))
        else:
            record(Delivery(str(payload.get("id")), response.status_code))
            if response.status_code < 500:
                return
        await asyncio.sleep(0.2 * 2 ** attempt)
