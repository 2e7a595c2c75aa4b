"""What the API's answers mean: statuses in flight and terminal, refusals and failures as
errors, ``detail`` texts, and where a polling URL may take the key."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx

from kontext_pipeline._support import jsonsafe
from kontext_pipeline.errors import (
    AuthenticationError,
    ModerationError,
    OutOfCreditsError,
    ProviderError,
    RequestRejectedError,
    TaskFailedError,
)

__all__ = [
    "IN_FLIGHT",
    "NOT_SENT",
    "NO_ANSWER",
    "SUBMIT_RETRY_STATUSES",
    "TERMINAL",
    "TRANSIENT_STATUSES",
    "check_polling_host",
    "describe",
    "detail",
    "failure_reason",
    "raise_for_refusal",
    "raise_for_status",
    "task_result",
]

IN_FLIGHT = frozenset({"Pending", "Reasoning", "Generating"})
"""Statuses of a task still running (Pending → Reasoning → Generating → Ready, since 2026). Any
status that is neither this nor :data:`TERMINAL` is taken to be in flight too."""
MODERATED = ("Request Moderated", "Content Moderated")
TERMINAL = frozenset({"Ready", "Error", "Failed", "Task not found", *MODERATED})
SUBMIT_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
"""Answers to a submit that say the API did not fulfil it: retried."""
TRANSIENT_STATUSES = frozenset({202, 404, 408, 425, 429, 500, 502, 503, 504})
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# the connection failed while sending, or closed with no answer at all: the API did not take
# the request (a server that accepted it answers; a stale keep-alive connection is the usual case)
NO_ANSWER = (httpx.WriteError, httpx.WriteTimeout, httpx.RemoteProtocolError, httpx.ReadError)
_BFL_DOMAINS = ("bfl.ai", "bfl.ml")


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def detail(response: httpx.Response) -> str:
    """BFL's ``detail``: FastAPI's list of ``{loc, msg}``, or a string."""
    try:
        found = jsonsafe.loads(response.content).get("detail")
    except (ValueError, AttributeError):
        return response.text[:200].strip() or f"HTTP {response.status_code}"
    if isinstance(found, list):
        parts = []
        for item in found:
            if isinstance(item, dict):
                loc = ".".join(str(x) for x in item.get("loc", []) if x != "body")
                parts.append(f"{loc}: {item.get('msg')}" if loc else str(item.get("msg")))
        return "; ".join(parts) or "no detail"
    return str(found) if found else f"HTTP {response.status_code}"


def raise_for_refusal(label: str, response: httpx.Response, action: str) -> None:
    """Raise what a refusal of the key (401/403), of credits (402) or of the request (400/422)
    means; return for any other answer."""
    status = response.status_code
    if status in (401, 403):
        raise AuthenticationError(
            f"the API refused the key (HTTP {status}) on {action}: check BFL_API_KEY",
            details=detail(response))
    if status == 402:
        raise OutOfCreditsError("the BFL account is out of credits (HTTP 402): add "
                                "credits, then run again; finished steps stay cached")
    if status in (400, 422):
        raise RequestRejectedError(f"{label}: the API rejected the request "
                                   f"(HTTP {status})", details=detail(response))


def task_result(response: httpx.Response) -> dict[str, Any] | None:
    """The task result a poll's answer carries (a JSON object with ``id`` and ``status``: the
    API may send one with HTTP 422), or None."""
    try:
        body = jsonsafe.loads(response.content)
    except ValueError:
        return None
    return body if isinstance(body, dict) and "id" in body and "status" in body else None


def failure_reason(body: Mapping[str, Any]) -> str | None:
    """Why a task failed, as its answer says: ``details.error``, else ``result.error`` (older
    answers), else ``details`` as a whole."""
    details, result = body.get("details"), body.get("result")
    for found in (details.get("error") if isinstance(details, dict) else None,
                  result.get("error") if isinstance(result, dict) else None, details):
        if found:
            return found if isinstance(found, str) else json.dumps(found, ensure_ascii=False)
    return None


def raise_for_status(label: str, task_id: str, prompt: str, status: str,
                     shown: str | None) -> None:
    """Raise what a terminal status other than ``Ready`` means (``shown``: the reason the
    answer gives, see :func:`failure_reason`)."""
    if status in MODERATED:
        what = "the prompt or input image" if status == MODERATED[0] else "the result"
        raise ModerationError(f"{label}: {status}: the API's moderation refused {what} "
                              f"(prompt: {prompt!r}); not retried, not charged",
                              status=status, details=shown)
    raise TaskFailedError(f"{label}: the task ended with status {status!r} (task "
                          f"{task_id}, prompt: {prompt!r})", status=status, details=shown)


def check_polling_host(label: str, api_base: str, polling_url: str) -> None:
    """Send the key only to the API's own host, or, for BFL's own domains, to another of
    its clusters (a polling URL may name the cluster that took the task)."""
    try:
        base, poll = httpx.URL(api_base), httpx.URL(polling_url)
        same = (poll.host, poll.port) == (base.host, base.port)
    except (httpx.InvalidURL, ValueError) as exc:
        raise ProviderError(f"{label}: the API gave a polling URL that is not a valid "
                            f"URL ({exc})") from exc
    sibling = any(base.host.endswith("." + d) and poll.host.endswith("." + d)
                  for d in _BFL_DOMAINS)
    if not (same or sibling) or (base.scheme == "https" and poll.scheme != "https"):
        raise ProviderError(f"{label}: the API gave a polling URL on "
                            f"{poll.netloc.decode()}, outside {base.netloc.decode()}'s "
                            "domain; the key is not sent there")
