"""The BFL FLUX.1 Kontext client: submit, poll the returned ``polling_url``, download the signed
result. The only module of the package that imports httpx.

Retry policy (what the API documents, and what mature clients do):

* **Submit** is not idempotent: a retry after the API accepted it would be billed twice. It is
  retried only when it surely was not accepted: the connection could not be made, or the answer
  was 429 (throttled; the account's concurrency is lowered for a while), 502 or 503. Any other
  failure after the request was sent (a timeout, a dropped connection, 500, 504, an answer that is
  not JSON) fails the step with the reason and is *not* retried.
* **Polls and downloads** are safe to repeat: 404/202/429/5xx answers, timeouts and dropped
  connections are retried with exponential back-off and jitter, honouring ``Retry-After``.
* 401/403 (key) and 402 (credits) stop the run; 400/422 fail the step with the API's ``detail``.
* ``Request Moderated`` / ``Content Moderated`` fail the step and are never retried; ``Error``,
  ``Task not found`` and any status this client does not know fail the step.

The key goes in the ``x-key`` header of API requests only: never to the result's delivery host,
never across a redirect, never into a message.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from kontext_pipeline.errors import (
    AmbiguousSubmitError,
    AuthenticationError,
    InvalidResultError,
    ModerationError,
    OutOfCreditsError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RequestRejectedError,
    TaskFailedError,
)
from kontext_pipeline.images import ImageCheckError, inspect_bytes
from kontext_pipeline.providers.base import (
    Accepted,
    AcceptedSink,
    EditRequest,
    EditResult,
    EventSink,
    ProviderEvent,
)
from kontext_pipeline.providers.policies import (
    ActiveTaskLimiter,
    LatencyTracker,
    PollPolicy,
    PollTimer,
    RetryPolicy,
    parse_retry_after,
)

__all__ = ["DEFAULT_API_BASE", "MAX_RESULT_BYTES", "BflProvider", "asgi_client", "http_client"]

DEFAULT_API_BASE = "https://api.bfl.ai"
MAX_RESULT_BYTES = 50_000_000
"""A result larger than this is refused (results are about one megapixel)."""

_IMAGE_FIELDS = ("input_image", "input_image_2", "input_image_3", "input_image_4")
_MODERATED = ("Request Moderated", "Content Moderated")
_SUBMIT_RETRY_STATUSES = frozenset({429, 502, 503})
_TRANSIENT_STATUSES = frozenset({202, 404, 408, 425, 429, 500, 502, 503, 504})
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# the connection failed while sending, or closed with no answer at all: the API did not take
# the request (a server that accepted it answers; a stale keep-alive connection is the usual case)
_NO_ANSWER = (httpx.WriteError, httpx.WriteTimeout, httpx.RemoteProtocolError, httpx.ReadError)
_USER_AGENT = f"kontext-pipeline httpx/{httpx.__version__}"
_BFL_DOMAINS = ("bfl.ai", "bfl.ml")
_SECRET_LENGTH = 8  # BFL's keys are far longer


def http_client(*, timeout: float = 30.0) -> httpx.AsyncClient:
    """An HTTP client suited to the API: no redirects followed (they could carry the key)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=10.0),
        # few connections: requests are short, and httpcore scans every pooled connection for
        # each request it assigns
        limits=httpx.Limits(max_connections=16, max_keepalive_connections=16),
        headers={"user-agent": _USER_AGENT},
        follow_redirects=False,
    )


def asgi_client(app: Any) -> httpx.AsyncClient:
    """A client whose requests go straight to an ASGI app, in-process (the preview provider)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                             headers={"user-agent": _USER_AGENT}, follow_redirects=False,
                             timeout=httpx.Timeout(60.0))


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _detail(response: httpx.Response) -> str:
    """BFL's ``detail``: FastAPI's list of ``{loc, msg}``, or a string."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return response.text[:200].strip() or f"HTTP {response.status_code}"
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(x) for x in item.get("loc", []) if x != "body")
                parts.append(f"{loc}: {item.get('msg')}" if loc else str(item.get("msg")))
        return "; ".join(parts) or "no detail"
    return str(detail) if detail else f"HTTP {response.status_code}"


class _TaskLostError(Exception):
    """A task of an earlier run that cannot be collected: it is submitted again."""


class _ChangedInputError(Exception):
    def __init__(self, index: int, expected: str, actual: str) -> None:
        super().__init__(index, expected, actual)
        self.index, self.expected, self.actual = index, expected, actual


@dataclass
class _Task:
    """One request in flight: what events and messages need to know about it."""

    request: EditRequest
    emit: EventSink
    task_id: str = ""
    polling_url: str = ""
    cost: int | None = None
    polls: int = 0
    submitted_at: float = 0.0
    resumed: bool = False  # submitted by an earlier run: its latency says nothing typical

    @property
    def label(self) -> str:
        return self.request.label or self.request.model

    def event(self, kind: Any, **fields: Any) -> None:
        self.emit(ProviderEvent(self.request.label, kind, request_id=self.task_id or None,
                                **fields))


class BflProvider:
    """Talks to the BFL API (or anything that speaks it, like the bundled server)."""

    def __init__(
        self,
        *,
        client: httpx.AsyncClient,
        api_key: str,
        api_base: str = DEFAULT_API_BASE,
        name: str = "bfl",
        limiter: ActiveTaskLimiter | None = None,
        retry: RetryPolicy | None = None,
        polling: PollPolicy | None = None,
        latencies: LatencyTracker | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        max_result_bytes: int = MAX_RESULT_BYTES,
    ) -> None:
        if not api_key:
            raise AuthenticationError("no API key: set BFL_API_KEY")
        self._client = client
        self._key = api_key
        self.api_base = api_base.rstrip("/")
        self._name = name
        self.limiter = limiter or ActiveTaskLimiter()
        self.retry = retry or RetryPolicy()
        self.polling = polling or PollPolicy()
        self.latencies = latencies or LatencyTracker()
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()
        self.max_result_bytes = max_result_bytes

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"BflProvider(name={self._name!r}, api_base={self.api_base!r})"

    async def aclose(self) -> None:
        await self._client.aclose()

    def _headers(self) -> dict[str, str]:
        return {"x-key": self._key, "accept": "application/json"}

    async def generate(self, request: EditRequest, on_event: EventSink | None = None, *,
                       resume: Accepted | None = None, on_accepted: AcceptedSink | None = None,
                       ) -> EditResult:
        """Submit, poll until terminal, download and verify one image (or, with ``resume``,
        collect the result of a task an earlier run submitted).

        Whatever the API answers, the key is in no event and no error this raises: a server
        that echoes it back (in a ``detail``, a status) has it blotted out here.
        """
        emit = on_event or (lambda _event: None)
        try:
            return await self._generate(request, lambda event: emit(self._blot_event(event)),
                                        resume, on_accepted)
        except ProviderError as error:
            error.message = self._blot(error.message)
            error.details = self._blot(error.details) if error.details else error.details
            error.args = (error.message,)
            raise

    def _leaks(self, text: str) -> bool:
        """Whether ``text`` holds the key (a key of a few characters, a local stand-in's,
        is no secret and would match ordinary words)."""
        return len(self._key) >= _SECRET_LENGTH and self._key in text

    def _blot(self, text: str) -> str:
        return text.replace(self._key, "[API key]") if self._leaks(text) else text

    def _blot_event(self, event: ProviderEvent) -> ProviderEvent:
        if event.message and self._leaks(event.message):
            return replace(event, message=self._blot(event.message))
        return event

    async def _generate(self, request: EditRequest, emit: EventSink, resume: Accepted | None,
                        on_accepted: AcceptedSink | None) -> EditResult:
        task = _Task(request, emit)
        task.event("queued")
        if resume is not None:
            try:
                return await self._collect(task, resume)
            except _TaskLostError as lost:
                task.event("retrying", message=f"{lost}; submitting it again")
                task = _Task(request, task.emit)
        async with self.limiter.slot(request.model):
            content = await self._build(task)
            await self._submit(task, content)
            del content  # a task that is polling holds no image in memory
            if on_accepted is not None:
                await on_accepted(Accepted(task.task_id, task.polling_url, self.api_base,
                                           task.cost, time.time()))
            result = await self._poll(task)
        return await self._finish(task, result)

    async def _collect(self, task: _Task, accepted: Accepted) -> EditResult:
        """Poll for and download the result of a task accepted by an earlier run."""
        task.task_id, task.polling_url, task.cost = (accepted.task_id, accepted.polling_url,
                                                     accepted.cost)
        task.resumed = True
        if accepted.api_base != self.api_base:
            raise _TaskLostError(f"{task.label}: task {task.task_id} of an earlier run was "
                                 f"accepted by {accepted.api_base}, not {self.api_base}")
        task.submitted_at = self._clock() - max(0.0, time.time() - accepted.submitted_at)
        self._check_polling_host(task)
        task.event("submitted", message=f"collecting task {task.task_id} of an earlier run")
        async with self.limiter.slot(task.request.model):
            try:
                result = await self._poll(task)
            except TaskFailedError as exc:
                if exc.status != "Task not found":
                    raise
                raise _TaskLostError(f"{task.label}: task {task.task_id} of an earlier run "
                                     "is no longer known to the API") from exc
        try:
            return await self._finish(task, result)
        except InvalidResultError as exc:
            raise _TaskLostError(f"{task.label}: the result of task {task.task_id} of an "
                                 f"earlier run can no longer be downloaded ({exc})") from exc

    async def _build(self, task: _Task) -> bytes:
        """The submit's body, built once whatever the retries (it is dropped once submitted)."""
        try:
            return await asyncio.to_thread(self._body, task.request)
        except OSError as exc:  # an input vanished since the plan hashed it
            raise ProviderError(f"{task.label}: cannot read an input image "
                                f"({exc.strerror or exc}: {exc.filename})") from exc
        except _ChangedInputError as exc:
            raise ProviderError(f"{task.label}: input image {exc.index + 1} is not the one "
                                f"planned (sha256 {exc.actual[:12]}, expected "
                                f"{exc.expected[:12]}): it changed on disk, or its cache "
                                "object is damaged; nothing was submitted") from None

    async def _finish(self, task: _Task, result: Mapping[str, Any]) -> EditResult:
        """Download and check the image a Ready task points at."""
        sample = result.get("sample") if isinstance(result, dict) else None
        if not isinstance(sample, str) or not sample:
            raise InvalidResultError(f"{task.label}: the API said Ready but gave no result URL")
        task.event("downloading")
        data, info = await self._download(task, sample)
        task.event("done")
        seed = result.get("seed")
        return EditResult(image=data, image_format=info.format.lower(), width=info.width,
                          height=info.height, request_id=task.task_id,
                          seed=seed if isinstance(seed, int) else None, cost=task.cost,
                          polls=task.polls, submitted_at=task.submitted_at,
                          finished_at=self._clock())

    @staticmethod
    def _body(request: EditRequest) -> bytes:
        """The submit's JSON, built as bytes: each image is read, base64-encoded and joined in
        without passing through a ``str`` (a 4 MP photo would otherwise be copied 4 times)."""
        body: dict[str, Any] = {
            "prompt": request.prompt,
            "seed": request.seed,
            "output_format": request.output_format,
            "safety_tolerance": request.safety_tolerance,
            "prompt_upsampling": request.prompt_upsampling,
        }
        if request.aspect_ratio is not None:
            body["aspect_ratio"] = request.aspect_ratio
        parts = [json.dumps(body).encode("utf-8")[:-1]]  # without the closing brace
        for index, (field, image) in enumerate(zip(_IMAGE_FIELDS, request.images, strict=False)):
            data = image.read_bytes() if isinstance(image, Path) else image
            if index < len(request.image_sha256):  # the bytes sent are the bytes keyed
                actual = hashlib.sha256(data).hexdigest()
                if actual != request.image_sha256[index]:
                    raise _ChangedInputError(index, request.image_sha256[index], actual)
            parts += [f', "{field}": "'.encode(), base64.b64encode(data), b'"']
            del data
        parts.append(b"}")
        return b"".join(parts)

    def _raise_for_refusal(self, task: _Task, response: httpx.Response, action: str) -> None:
        status = response.status_code
        if status in (401, 403):
            raise AuthenticationError(
                f"the API refused the key (HTTP {status}) on {action}: check BFL_API_KEY",
                details=_detail(response))
        if status == 402:
            raise OutOfCreditsError("the BFL account is out of credits (HTTP 402): add "
                                    "credits, then run again; finished steps stay cached")
        if status in (400, 422):
            raise RequestRejectedError(f"{task.label}: the API rejected the request "
                                       f"(HTTP {status})", details=_detail(response))

    async def _submit(self, task: _Task, content: bytes) -> None:
        url = f"{self.api_base}/v1/{task.request.model}"
        headers = {**self._headers(), "content-type": "application/json"}
        for attempt in range(1, self.retry.attempts + 1):
            retry_after = None
            try:
                response = await self._post(task, url, content, headers)
            except _NOT_SENT as exc:
                failure = f"cannot connect to {urlsplit(url).netloc} ({_describe(exc)})"
            except _NO_ANSWER as exc:
                failure = f"the connection closed before any answer ({_describe(exc)})"
            except httpx.HTTPError as exc:  # a timeout waiting for the answer: maybe accepted
                raise AmbiguousSubmitError(
                    f"{task.label}: the submit failed after it was sent ({_describe(exc)}); "
                    "the API may have accepted and billed it, so it is not retried") from exc
            else:
                if response.status_code == 200:
                    self._accept(task, response)
                    return
                self._raise_for_refusal(task, response, "submit")
                if response.status_code not in _SUBMIT_RETRY_STATUSES:
                    raise AmbiguousSubmitError(
                        f"{task.label}: the API answered the submit with HTTP "
                        f"{response.status_code}; it may have accepted and billed it, so it is "
                        "not retried", details=_detail(response))
                if response.status_code == 429:
                    self.limiter.throttle()
                retry_after = parse_retry_after(response.headers.get("retry-after"))
                failure = f"HTTP {response.status_code} ({_detail(response)})"
            if attempt == self.retry.attempts:
                raise ProviderUnavailableError(
                    f"{task.label}: the submit failed {attempt} times; last: {failure}")
            await self._wait_retry(task, attempt, retry_after, f"submit: {failure}")

    async def _post(self, task: _Task, url: str, content: bytes,
                    headers: dict[str, str]) -> httpx.Response:
        """POST and read the answer. A failure before the answer's status line raises as it
        is; one while reading its body returns the answer without a body, unless the status
        said the submit was accepted (the task id is then lost with the body)."""
        async with self._client.stream("POST", url, content=content,
                                       headers=headers) as response:
            try:
                await response.aread()
            except httpx.HTTPError as exc:
                if response.status_code == 200:
                    raise AmbiguousSubmitError(
                        f"{task.label}: the API accepted the submit (HTTP 200) but the "
                        f"connection dropped before its answer was complete ({_describe(exc)});"
                        " the task id is lost and the API may have billed it, so it is not "
                        "retried") from exc
                return httpx.Response(response.status_code, headers=response.headers,
                                      request=response.request)
        return response

    def _accept(self, task: _Task, response: httpx.Response) -> None:
        try:
            answer = response.json()
            task.task_id = str(answer["id"])
        except (ValueError, KeyError, TypeError) as exc:
            raise AmbiguousSubmitError(f"{task.label}: the API accepted the submit but its "
                                       "answer has no task id; not retried") from exc
        polling_url = answer.get("polling_url")
        task.polling_url = (polling_url if isinstance(polling_url, str) and polling_url
                            else f"{self.api_base}/v1/get_result?id={task.task_id}")
        if self._leaks(task.polling_url) or self._leaks(task.task_id):
            raise AmbiguousSubmitError(f"{task.label}: the API answered the submit with the "
                                       "API key in its task id or polling URL; they are not "
                                       "used (nor written anywhere)")
        cost = answer.get("cost")
        task.cost = cost if isinstance(cost, int) and not isinstance(cost, bool) else None
        task.submitted_at = self._clock()
        self._check_polling_host(task)
        task.event("submitted")

    def _check_polling_host(self, task: _Task) -> None:
        """Send the key only to the API's own host, or, for BFL's own domains, to another of
        its clusters (a polling URL may name the cluster that took the task)."""
        try:
            base, poll = httpx.URL(self.api_base), httpx.URL(task.polling_url)
            same = (poll.host, poll.port) == (base.host, base.port)
        except (httpx.InvalidURL, ValueError) as exc:
            raise ProviderError(f"{task.label}: the API gave a polling URL that is not a valid "
                                f"URL ({exc})") from exc
        sibling = any(base.host.endswith("." + d) and poll.host.endswith("." + d)
                      for d in _BFL_DOMAINS)
        if not (same or sibling) or (base.scheme == "https" and poll.scheme != "https"):
            raise ProviderError(f"{task.label}: the API gave a polling URL on "
                                f"{poll.netloc.decode()}, outside {base.netloc.decode()}'s "
                                "domain; the key is not sent there")

    async def _wait_retry(self, task: _Task, attempt: int, retry_after: float | None,
                          reason: str) -> None:
        delay = self.retry.delay(attempt, self._rng, retry_after)
        task.event("retrying", message=f"{reason}; retrying in {delay:.1f} s")
        await self._sleep(delay)

    async def _poll(self, task: _Task) -> Mapping[str, Any]:
        model = task.request.model
        timer = PollTimer(self.polling, self._rng, self.latencies.expected(model))
        deadline = self._clock() - task.submitted_at + self.polling.deadline
        failures = 0
        while True:
            elapsed = await self._wait_due(task, timer, deadline)
            task.polls += 1
            body, failure, retry_after = await self._poll_once(task)
            if body is None:
                failures += 1
                if failures >= self.retry.attempts:
                    raise ProviderUnavailableError(
                        f"{task.label}: polling failed {failures} times in a row; last: "
                        f"{failure} (task {task.task_id})")
                delay = self.retry.delay(failures, self._rng, retry_after)
                timer.retry(elapsed, delay)
                task.event("retrying", message=f"poll: {failure}; retrying in {delay:.1f} s")
                continue
            failures = 0
            status = body.get("status")
            if status == "Pending":
                progress = body.get("progress")
                fraction = (float(progress) if isinstance(progress, int | float)
                            and not isinstance(progress, bool) else None)
                task.event("polling", progress=fraction)
                timer.pending(elapsed, self.latencies.expected(model), fraction)
                continue
            if status == "Ready":
                if not task.resumed:
                    self.latencies.record(model, self._clock() - task.submitted_at)
                result = body.get("result")
                return result if isinstance(result, dict) else {}
            self._raise_for_status(task, str(status), body.get("details"))

    async def _wait_due(self, task: _Task, timer: PollTimer, deadline: float) -> float:
        """Wait until the next poll is due (sooner if another task of the model finishes and
        shows this one is probably ready); returns the elapsed time then. ``deadline``: the
        elapsed time after which no poll is made."""
        model = task.request.model
        while True:
            elapsed = self._clock() - task.submitted_at
            due = timer.due(self.latencies.expected(model))
            if due > deadline:
                raise ProviderTimeoutError(
                    f"{task.label}: no result after {self.polling.deadline:.0f} s (task "
                    f"{task.task_id}); it was not submitted again")
            if elapsed >= due:
                return elapsed
            if await self.latencies.wait(model, due - elapsed):
                latest = self.latencies.latest(model)
                if latest is not None:
                    timer.news(latest)

    async def _poll_once(self, task: _Task) -> tuple[dict[str, Any] | None, str, float | None]:
        try:
            response = await self._client.get(task.polling_url, headers=self._headers())
        except httpx.HTTPError as exc:
            return None, _describe(exc), None
        if response.status_code == 200:
            try:
                body = response.json()
            except ValueError:
                return None, "the answer is not JSON", None
            if isinstance(body, dict):
                return body, "", None
            return None, "the answer is not a JSON object", None
        self._raise_for_refusal(task, response, "poll")
        if response.status_code == 429:
            self.limiter.throttle()
        if response.status_code not in _TRANSIENT_STATUSES:
            raise TaskFailedError(f"{task.label}: polling answered HTTP {response.status_code}",
                                  status=f"HTTP {response.status_code}",
                                  details=_detail(response))
        return (None, f"HTTP {response.status_code}",
                parse_retry_after(response.headers.get("retry-after")))

    def _raise_for_status(self, task: _Task, status: str, details: Any) -> None:
        shown = json.dumps(details, ensure_ascii=False) if details else None
        prompt = task.request.prompt
        if status in _MODERATED:
            what = "the prompt or input image" if status == _MODERATED[0] else "the result"
            raise ModerationError(f"{task.label}: {status}: the API's moderation refused {what} "
                                  f"(prompt: {prompt!r}); not retried, not charged",
                                  status=status, details=shown)
        raise TaskFailedError(f"{task.label}: the task ended with status {status!r} (task "
                              f"{task.task_id}, prompt: {prompt!r})", status=status,
                              details=shown)

    async def _download(self, task: _Task, url: str) -> tuple[bytes, Any]:
        failure = ""
        refreshed = False
        for attempt in range(1, self.retry.attempts + 1):
            retry_after = None
            try:
                data, status = await self._fetch(url)
            except httpx.HTTPError as exc:
                failure = _describe(exc)
            else:
                if status == 200:
                    try:
                        return data, await asyncio.to_thread(inspect_bytes, data)
                    except ImageCheckError as exc:
                        failure = f"the downloaded result {exc}"
                elif status in (401, 403, 404, 410) and not refreshed:
                    url, refreshed = await self._fresh_url(task), True  # expired signature
                    continue
                elif status in _TRANSIENT_STATUSES:
                    failure = f"HTTP {status}"
                else:
                    raise InvalidResultError(f"{task.label}: the result URL answered HTTP "
                                             f"{status} (task {task.task_id})")
            if attempt == self.retry.attempts:
                break
            await self._wait_retry(task, attempt, retry_after, f"download: {failure}")
        raise InvalidResultError(f"{task.label}: the result could not be downloaded: {failure} "
                                 f"(task {task.task_id})")

    async def _fetch(self, url: str) -> tuple[bytes, int]:
        """GET a result URL, without the key, refusing bodies over ``max_result_bytes``."""
        async with self._client.stream("GET", url, follow_redirects=True) as response:
            if response.status_code != 200:
                await response.aread()
                return b"", response.status_code
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
            return b"".join(chunks), 200

    async def _fresh_url(self, task: _Task) -> str:
        """Poll once more: a Ready task's answer carries a newly signed result URL."""
        body, failure, _ = await self._poll_once(task)
        result = body.get("result") if body else None
        sample = result.get("sample") if isinstance(result, dict) else None
        if not isinstance(sample, str):
            raise InvalidResultError(f"{task.label}: the result URL expired and no fresh one "
                                     f"could be had ({failure or 'no result in the answer'})")
        return sample
