"""The HTTP exchanges of one task with the API, each with its retry policy: the submit, a poll,
and the download of the result.

The key goes in the ``x-key`` header of submits and polls only: never to the result's delivery
host, never across a redirect (the client follows none), never into a message.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from kontext_pipeline.errors import (
    AmbiguousSubmitError,
    InvalidResultError,
    ProviderUnavailableError,
    TaskFailedError,
)
from kontext_pipeline.images import ImageCheckError, ImageInfo, inspect_bytes
from kontext_pipeline.providers.bfl.answers import (
    NO_ANSWER,
    NOT_SENT,
    SUBMIT_RETRY_STATUSES,
    TRANSIENT_STATUSES,
    check_polling_host,
    describe,
    detail,
    raise_for_refusal,
    task_result,
)
from kontext_pipeline.providers.bfl.task import TaskState
from kontext_pipeline.providers.policies import ActiveTaskLimiter, RetryPolicy, parse_retry_after

__all__ = ["SECRET_LENGTH", "Exchanges", "PollAnswer"]

SECRET_LENGTH = 8
"""A key shorter than this (a local stand-in's) is no secret, and would match ordinary words."""

PollAnswer = tuple[dict[str, Any] | None, str, float | None]
"""A poll's body, or None with why it failed and the ``Retry-After`` it came with."""


class Exchanges:
    """Requests to one API account, over one client."""

    def __init__(self, *, client: httpx.AsyncClient, api_key: str, retry: RetryPolicy,
                 limiter: ActiveTaskLimiter, sleep: Callable[[float], Awaitable[None]],
                 clock: Callable[[], float], rng: random.Random,
                 max_result_bytes: int) -> None:
        self.client = client
        self._key = api_key
        self.retry = retry
        self.limiter = limiter
        self._sleep = sleep
        self._clock = clock
        self._rng = rng
        self.max_result_bytes = max_result_bytes

    def leaks(self, text: str) -> bool:
        """Whether ``text`` holds the key."""
        return len(self._key) >= SECRET_LENGTH and self._key in text

    def blot(self, text: str) -> str:
        """``text`` with the key blotted out."""
        return text.replace(self._key, "[API key]") if self.leaks(text) else text

    def _headers(self) -> dict[str, str]:
        return {"x-key": self._key, "accept": "application/json"}

    async def wait_retry(self, task: TaskState, attempt: int, retry_after: float | None,
                         reason: str) -> None:
        delay = self.retry.delay(attempt, self._rng, retry_after)
        task.event("retrying", message=f"{reason}; retrying in {delay:.1f} s")
        await self._sleep(delay)

    async def submit(self, task: TaskState, content: bytes, api_base: str) -> None:
        """Submit ``content``; on acceptance ``task`` has its id, polling URL and cost.

        Retried only when the API did not take the request: it could not be sent, no answer
        came, or the answer said so (429, 500, 502, 503, 504). A retry after the API accepted
        it would be billed twice.
        """
        url = f"{api_base}/v1/{task.request.model}"
        headers = {**self._headers(), "content-type": "application/json"}
        for attempt in range(1, self.retry.attempts + 1):
            retry_after = None
            try:
                response = await self._post(task, url, content, headers)
            except NOT_SENT as exc:
                failure = f"cannot connect to {urlsplit(url).netloc} ({describe(exc)})"
            except NO_ANSWER as exc:
                failure = f"the connection closed before any answer ({describe(exc)})"
            except httpx.HTTPError as exc:  # a timeout waiting for the answer: maybe accepted
                raise AmbiguousSubmitError(
                    f"{task.label}: the submit failed after it was sent ({describe(exc)}); "
                    "the API may have accepted and billed it, so it is not retried") from exc
            else:
                if response.status_code == 200:
                    self._accept(task, response, api_base)
                    return
                raise_for_refusal(task.label, response, "submit")
                if response.status_code not in SUBMIT_RETRY_STATUSES:
                    raise AmbiguousSubmitError(
                        f"{task.label}: the API answered the submit with HTTP "
                        f"{response.status_code}; it may have accepted and billed it, so it is "
                        "not retried", details=detail(response))
                if response.status_code == 429:
                    self.limiter.throttle()
                retry_after = parse_retry_after(response.headers.get("retry-after"))
                failure = f"HTTP {response.status_code} ({detail(response)})"
            if attempt == self.retry.attempts:
                raise ProviderUnavailableError(
                    f"{task.label}: the submit failed {attempt} times; last: {failure}")
            await self.wait_retry(task, attempt, retry_after, f"submit: {failure}")

    async def _post(self, task: TaskState, url: str, content: bytes,
                    headers: dict[str, str]) -> httpx.Response:
        """POST and read the answer. A failure before the answer's status line raises as it
        is; one while reading its body returns the answer without a body, unless the status
        said the submit was accepted (the task id is then lost with the body)."""
        async with self.client.stream("POST", url, content=content,
                                      headers=headers) as response:
            try:
                await response.aread()
            except httpx.HTTPError as exc:
                if response.status_code == 200:
                    raise AmbiguousSubmitError(
                        f"{task.label}: the API accepted the submit (HTTP 200) but the "
                        f"connection dropped before its answer was complete ({describe(exc)});"
                        " the task id is lost and the API may have billed it, so it is not "
                        "retried") from exc
                return httpx.Response(response.status_code, headers=response.headers,
                                      request=response.request)
        return response

    def _accept(self, task: TaskState, response: httpx.Response, api_base: str) -> None:
        try:
            answer = response.json()
        except ValueError as exc:
            raise AmbiguousSubmitError(f"{task.label}: the API's answer to the submit is not "
                                       "JSON; it may have accepted and billed it, so it is not "
                                       "retried") from exc
        try:
            task.task_id = str(answer["id"])
        except (KeyError, TypeError) as exc:
            raise AmbiguousSubmitError(f"{task.label}: the API accepted the submit but its "
                                       "answer has no task id; not retried") from exc
        polling_url = answer.get("polling_url")
        task.polling_url = (polling_url if isinstance(polling_url, str) and polling_url
                            else f"{api_base}/v1/get_result?id={task.task_id}")
        if self.leaks(task.polling_url) or self.leaks(task.task_id):
            raise AmbiguousSubmitError(f"{task.label}: the API answered the submit with the "
                                       "API key in its task id or polling URL; they are not "
                                       "used (nor written anywhere)")
        cost = answer.get("cost")
        task.cost = cost if isinstance(cost, int) and not isinstance(cost, bool) else None
        task.submitted_at = self._clock()
        check_polling_host(task.label, api_base, task.polling_url)
        task.event("submitted")

    async def poll_once(self, task: TaskState) -> PollAnswer:
        """GET the polling URL once. Refusals and answers no retry can change raise."""
        try:
            response = await self.client.get(task.polling_url, headers=self._headers())
        except httpx.HTTPError as exc:
            return None, describe(exc), None
        if response.status_code == 200:
            return _status_answer(response)
        if response.status_code == 422:  # the API may answer a task's result with a 422
            result = task_result(response)
            if result is not None and isinstance(result["status"], str):
                return result, "", None
        raise_for_refusal(task.label, response, "poll")
        if response.status_code == 429:
            self.limiter.throttle()
        if response.status_code not in TRANSIENT_STATUSES:
            raise TaskFailedError(f"{task.label}: polling answered HTTP {response.status_code}",
                                  status=f"HTTP {response.status_code}",
                                  details=detail(response))
        return (None, f"HTTP {response.status_code}",
                parse_retry_after(response.headers.get("retry-after")))

    async def download(self, task: TaskState, url: str) -> tuple[bytes, ImageInfo]:
        """The result at its signed URL, checked to be one whole image; an expired signature
        is renewed once by polling again."""
        failure = ""
        refreshed = False
        for attempt in range(1, self.retry.attempts + 1):
            retry_after = None
            try:
                data, status, retry_after = await self._fetch(url)
            except httpx.HTTPError as exc:
                failure = describe(exc)
            else:
                if status == 200:
                    try:
                        return data, await asyncio.to_thread(inspect_bytes, data)
                    except ImageCheckError as exc:
                        failure = f"the downloaded result {exc}"
                elif status in (401, 403, 404, 410) and not refreshed:
                    url, refreshed = await self._fresh_url(task), True  # expired signature
                    continue
                elif status in TRANSIENT_STATUSES:
                    failure = f"HTTP {status}"
                else:
                    raise InvalidResultError(f"{task.label}: the result URL answered HTTP "
                                             f"{status} (task {task.task_id})")
            if attempt == self.retry.attempts:
                break
            await self.wait_retry(task, attempt, retry_after, f"download: {failure}")
        raise InvalidResultError(f"{task.label}: the result could not be downloaded: {failure} "
                                 f"(task {task.task_id})")

    async def _fetch(self, url: str) -> tuple[bytes, int, float | None]:
        """GET a result URL, without the key, refusing bodies over ``max_result_bytes``:
        the body, the status and the ``Retry-After`` that came with a refusal."""
        async with self.client.stream("GET", url, follow_redirects=True) as response:
            if response.status_code != 200:
                await response.aread()
                return (b"", response.status_code,
                        parse_retry_after(response.headers.get("retry-after")))
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > self.max_result_bytes:
                raise InvalidResultError(f"the result is {int(declared)} bytes; at most "
                                         f"{self.max_result_bytes} are accepted")
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self.max_result_bytes:
                    raise InvalidResultError(f"the result exceeds {self.max_result_bytes} bytes")
                chunks.append(chunk)
            return b"".join(chunks), 200, None

    async def _fresh_url(self, task: TaskState) -> str:
        """Poll once more: a Ready task's answer carries a newly signed result URL."""
        body, failure, _ = await self.poll_once(task)
        result = body.get("result") if body else None
        sample = result.get("sample") if isinstance(result, dict) else None
        if not isinstance(sample, str):
            raise InvalidResultError(f"{task.label}: the result URL expired and no fresh one "
                                     f"could be had ({failure or 'no result in the answer'})")
        return sample


def _status_answer(response: httpx.Response) -> PollAnswer:
    """A poll's 200 answer: a task's status, or why it is none."""
    try:
        body = response.json()
    except ValueError:
        return None, "the answer is not JSON", None
    if not isinstance(body, dict):
        return None, "the answer is not a JSON object", None
    if not isinstance(body.get("status"), str):
        return None, "the answer has no status", None
    return body, "", None
