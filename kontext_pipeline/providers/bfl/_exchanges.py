"""The HTTP exchanges of one task with the API, each with its retry policy: the submit, a poll,
and the download of the result.

The key goes in the ``x-key`` header of submits and polls only: never to the result's delivery
host, never across a redirect (the client follows none), never into a message, and no URL that
holds it is requested. Every answer is read within bounds (:mod:`.reading`): JSON and error
bodies up to 1 MB, results up to ``max_result_bytes``, each exchange within its deadline.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from kontext_pipeline._support import jsonsafe
from kontext_pipeline._support.images import (
    RESULT_FORMATS,
    ImageCheckError,
    ImageInfo,
    ImageRefusedError,
    inspect_bytes,
)
from kontext_pipeline.errors import (
    AmbiguousSubmitError,
    InvalidResultError,
    ProviderUnavailableError,
    TaskFailedError,
)
from kontext_pipeline.providers._policies import ActiveTaskLimiter, RetryPolicy, parse_retry_after
from kontext_pipeline.providers.bfl._answers import (
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
from kontext_pipeline.providers.bfl._reading import (
    MAX_ANSWER_BYTES,
    BodyError,
    read_body,
    with_body,
    within,
)
from kontext_pipeline.providers.bfl._task import TaskState
from kontext_pipeline.providers.bfl._urls import SECRET_LENGTH, holds_secret

__all__ = ["Exchanges", "PollAnswer"]

REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
"""Redirects a result's download follows, at most (bodies unread, the key never sent)."""

Answer = tuple[httpx.Response, str]
"""An answer with its body read, or without it and why (its size, its encoding)."""

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

    def holds_key(self, url: str) -> bool:
        """Whether ``url`` holds the key anywhere, percent-encoded or not."""
        return holds_secret(url, self._key)

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
                response, unread = await self._post(task, url, content, headers)
            except NOT_SENT as exc:
                failure = f"cannot connect to {httpx.URL(url).netloc.decode()} ({describe(exc)})"
            except NO_ANSWER as exc:
                failure = f"the connection closed before any answer ({describe(exc)})"
            except httpx.HTTPError as exc:  # a timeout waiting for the answer: maybe accepted
                raise AmbiguousSubmitError(
                    f"{task.label}: the submit failed after it was sent ({describe(exc)}); "
                    "the API may have accepted and billed it, so it is not retried") from exc
            else:
                if response.status_code == 200:  # with its body: see _post_read
                    self._accept(task, response, api_base)
                    return
                raise_for_refusal(task.label, response, "submit")
                if response.status_code not in SUBMIT_RETRY_STATUSES:
                    raise AmbiguousSubmitError(
                        f"{task.label}: the API answered the submit with HTTP "
                        f"{response.status_code}; it may have accepted and billed it, so it is "
                        "not retried", details=_shown(response, unread))
                if response.status_code == 429:
                    self.limiter.throttle()
                retry_after = parse_retry_after(response.headers.get("retry-after"))
                failure = f"HTTP {response.status_code} ({_shown(response, unread)})"
            if attempt == self.retry.attempts:
                raise ProviderUnavailableError(
                    f"{task.label}: the submit failed {attempt} times; last: {failure}")
            await self.wait_retry(task, attempt, retry_after, f"submit: {failure}")

    async def _post(self, task: TaskState, url: str, content: bytes,
                    headers: dict[str, str]) -> Answer:
        """POST and read the answer, within the submit's deadline. A failure before the
        answer's status line raises as it is; one while reading its body returns the answer
        without a body, unless the status said the submit was accepted (the task id is then
        lost with the body)."""
        limit = self.retry.request_deadline + len(content) / self.retry.upload_rate
        answered: list[httpx.Response] = []
        try:
            return await within(limit, self._post_read(task, url, content, headers, answered))
        except asyncio.TimeoutError:
            if not answered:
                raise AmbiguousSubmitError(
                    f"{task.label}: the submit had no answer within {limit:.0f} s; the API may "
                    "have accepted and billed it, so it is not retried") from None
            if answered[0].status_code == 200:
                raise _lost_answer(task, f"its answer did not arrive whole within {limit:.0f} "
                                         "s") from None
            return with_body(answered[0], b""), f"did not arrive within {limit:.0f} s"

    async def _post_read(self, task: TaskState, url: str, content: bytes,
                         headers: dict[str, str], answered: list[httpx.Response]) -> Answer:
        async with self.client.stream("POST", url, content=content,
                                      headers=headers) as response:
            answered.append(response)
            try:
                answer, unread = await _read(response)
            except httpx.HTTPError as exc:
                if response.status_code == 200:
                    raise _lost_answer(task, f"the connection dropped before its answer was "
                                             f"complete ({describe(exc)})") from exc
                return with_body(response, b""), ""
            if unread and response.status_code == 200:
                raise _lost_answer(task, f"its answer {unread}")
            return answer, unread

    def _accept(self, task: TaskState, response: httpx.Response, api_base: str) -> None:
        try:
            answer = jsonsafe.loads(response.content)
        except ValueError as exc:  # an answer too large to read raised in _post
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
        if self.holds_key(task.polling_url) or self.holds_key(task.task_id):
            raise AmbiguousSubmitError(f"{task.label}: the API answered the submit with the "
                                       "API key in its task id or polling URL; they are not "
                                       "used (nor written anywhere)")
        cost = answer.get("cost")
        task.cost = (cost if isinstance(cost, int | float) and not isinstance(cost, bool)
                     and math.isfinite(cost) and cost >= 0 else None)
        task.submitted_at = self._clock()
        check_polling_host(task.label, api_base, task.polling_url)
        task.event("submitted")

    async def poll_once(self, task: TaskState, limit: float | None = None) -> PollAnswer:
        """GET the polling URL once, within ``limit`` seconds (by default the request deadline,
        or the time left until the task's deadline if that is sooner). Refusals and answers no
        retry can change raise."""
        if limit is None:
            limit = min(self.retry.request_deadline, task.deadline_at - self._clock())
        try:
            response, unread = await within(limit, self._get(task.polling_url))
        except asyncio.TimeoutError:
            return None, f"no whole answer within {max(limit, 0):.0f} s", None
        except httpx.HTTPError as exc:
            return None, describe(exc), None
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if response.status_code == 200:
            if unread:
                return None, f"the answer {unread}", retry_after
            return _status_answer(response, retry_after)
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
                                  details=_shown(response, unread))
        return None, f"HTTP {response.status_code}", retry_after

    async def _get(self, url: str) -> Answer:
        async with self.client.stream("GET", url, headers=self._headers()) as response:
            return await _read(response)

    async def download(self, task: TaskState, url: str) -> tuple[bytes, ImageInfo]:
        """The result at its signed URL, checked to be one whole image in the format the step
        asked for; an expired signature is renewed once by polling again. Each attempt has the
        request deadline; all of them end by the task's deadline, or one request deadline from
        now if that is later."""
        self.check_result_url(task, url)
        wanted = RESULT_FORMATS.get(task.request.output_format)
        if wanted is None:
            raise InvalidResultError(f"{task.label}: the step asked for "
                                     f"{task.request.output_format!r}, which is not a result "
                                     f"format ({', '.join(RESULT_FORMATS)})")
        ends = max(task.deadline_at, self._clock() + self.retry.request_deadline)
        failure = ""
        refreshed = False
        for attempt in range(1, self.retry.attempts + 1):
            retry_after = None
            limit = min(self.retry.request_deadline, ends - self._clock())
            try:
                data, status, retry_after = await within(limit, self._fetch(task, url))
            except asyncio.TimeoutError:
                failure = f"no whole answer within {max(limit, 0):.0f} s"
            except httpx.HTTPError as exc:
                failure = describe(exc)
            else:
                if status == 200:
                    try:
                        return data, await asyncio.to_thread(inspect_bytes, data, (wanted,))
                    except ImageRefusedError as exc:  # the same bytes again: not retried
                        raise InvalidResultError(f"{task.label}: the downloaded result {exc} "
                                                 f"(task {task.task_id})") from None
                    except ImageCheckError as exc:
                        failure = f"the downloaded result {exc}"
                elif status in (401, 403, 404, 410) and not refreshed:
                    url, refreshed = await self._fresh_url(task, ends), True  # expired
                    continue
                elif status in TRANSIENT_STATUSES:
                    failure = f"HTTP {status}"
                else:
                    raise InvalidResultError(f"{task.label}: the result URL answered HTTP "
                                             f"{status} (task {task.task_id})")
            delay = self.retry.delay(attempt, self._rng, retry_after)
            if attempt == self.retry.attempts or self._clock() + delay >= ends:
                break
            task.event("retrying", message=f"download: {failure}; retrying in {delay:.1f} s")
            await self._sleep(delay)
        raise InvalidResultError(f"{task.label}: the result could not be downloaded: {failure} "
                                 f"(task {task.task_id})")

    def check_result_url(self, task: TaskState, url: str) -> None:
        """Refuse a result URL that holds the key: downloading it would hand the key to the
        delivery host (and to every log on the way)."""
        if self.holds_key(url):
            raise InvalidResultError(f"{task.label}: the API gave a result URL that holds the "
                                     "API key; it is not downloaded, so the key does not reach "
                                     f"the delivery host (task {task.task_id})")

    async def _fetch(self, task: TaskState, url: str) -> tuple[bytes, int, float | None]:
        """GET a result URL, without the key, refusing bodies over ``max_result_bytes``:
        the body, the status and the ``Retry-After`` that came with a refusal (whose body is
        not read). Redirects are followed, a few, their bodies unread."""
        for _hop in range(MAX_REDIRECTS + 1):
            async with self.client.stream("GET", url) as response:
                status = response.status_code
                location = response.headers.get("location")
                if status in REDIRECTS and location:
                    url = str(response.url.join(location))
                    self.check_result_url(task, url)
                    continue
                if status != 200:
                    return b"", status, parse_retry_after(response.headers.get("retry-after"))
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > self.max_result_bytes:
                    raise InvalidResultError(
                        f"{task.label}: the result is {int(declared)} bytes; at most "
                        f"{self.max_result_bytes} are accepted")
                try:
                    return await read_body(response, self.max_result_bytes), 200, None
                except BodyError as exc:
                    raise InvalidResultError(f"{task.label}: the result {exc}") from None
        raise InvalidResultError(f"{task.label}: the result URL redirected more than "
                                 f"{MAX_REDIRECTS} times (task {task.task_id})")

    async def _fresh_url(self, task: TaskState, ends: float) -> str:
        """Poll once more: a Ready task's answer carries a newly signed result URL."""
        limit = min(self.retry.request_deadline, ends - self._clock())
        body, failure, _ = await self.poll_once(task, limit)
        result = body.get("result") if body else None
        sample = result.get("sample") if isinstance(result, dict) else None
        if not isinstance(sample, str):
            raise InvalidResultError(f"{task.label}: the result URL expired and no fresh one "
                                     f"could be had ({failure or 'no result in the answer'})")
        self.check_result_url(task, sample)
        return sample


async def _read(response: httpx.Response) -> Answer:
    """A JSON answer (or an error's), its body read up to :data:`MAX_ANSWER_BYTES`; or
    without its body, and why (``is over 1 MB``)."""
    try:
        return with_body(response, await read_body(response, MAX_ANSWER_BYTES)), ""
    except BodyError as exc:
        return with_body(response, b""), str(exc)


def _shown(response: httpx.Response, unread: str) -> str:
    """What an error answer says: its ``detail``, or why its body was not read."""
    return f"its body {unread}" if unread else detail(response)


def _lost_answer(task: TaskState, why: str) -> AmbiguousSubmitError:
    return AmbiguousSubmitError(
        f"{task.label}: the API accepted the submit (HTTP 200) but {why}; the task id is lost "
        "and the API may have billed it, so it is not retried")


def _status_answer(response: httpx.Response, retry_after: float | None) -> PollAnswer:
    """A poll's 200 answer: a task's status, or why it is none (and when to ask again)."""
    try:
        body = jsonsafe.loads(response.content)
    except ValueError:
        return None, "the answer is not JSON", retry_after
    if not isinstance(body, dict):
        return None, "the answer is not a JSON object", retry_after
    if not isinstance(body.get("status"), str):
        return None, "the answer has no status", retry_after
    return body, "", None
