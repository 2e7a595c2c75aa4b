"""The provider: one request from submit to verified image, within the account's limits.

It holds an active-task slot from submit until the task is terminal, polls where the task's
progress and the model's learnt latencies say its result is likely (or, with a webhook, takes
the result the API pushes and polls only as a slow fallback), collects the tasks an
interrupted run had submitted, and keeps the key out of every event and error, whatever the
API echoes back.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

import httpx

from kontext_pipeline.errors import (
    AuthenticationError,
    InvalidResultError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    TaskFailedError,
)
from kontext_pipeline.providers._base import (
    Accepted,
    AcceptedSink,
    EditRequest,
    EditResult,
    EventSink,
    ProviderEvent,
)
from kontext_pipeline.providers._inbox import Webhook
from kontext_pipeline.providers._latencies import LatencyTracker, Learnt, Reading
from kontext_pipeline.providers._policies import ActiveTaskLimiter, RetryPolicy
from kontext_pipeline.providers._polling import PollPolicy, PollTimer
from kontext_pipeline.providers.bfl._answers import (
    IN_FLIGHT,
    TERMINAL,
    check_polling_host,
    failure_reason,
    raise_for_status,
)
from kontext_pipeline.providers.bfl._body import ChangedInputError, request_body
from kontext_pipeline.providers.bfl._exchanges import Exchanges
from kontext_pipeline.providers.bfl._task import TaskLostError, TaskState
from kontext_pipeline.providers.bfl._urls import check_api_base

__all__ = ["DEFAULT_API_BASE", "MAX_RESULT_BYTES", "BflProvider", "latency_kind", "share_done"]

DEFAULT_API_BASE = "https://api.bfl.ai"
MAX_RESULT_BYTES = 50_000_000
"""A result larger than this is refused (results are about one megapixel)."""
MAX_UNKNOWN_WARNINGS = 5
"""Unknown statuses warned about per run, at most (an API may put a counter in its status)."""


def latency_kind(request: EditRequest) -> str:
    """What tasks that take about as long as each other share (their latencies are learnt
    apart from others'): the model, the size and steps asked for, the number of inputs."""
    return (f"{request.model} {request.width}x{request.height} steps {request.steps} "
            f"inputs {len(request.images)}")


def share_done(progress: object) -> float | None:
    """A poll's ``progress`` as the share done, when it is one: a number from 0 to 1."""
    if isinstance(progress, bool) or not isinstance(progress, int | float):
        return None
    try:
        share = float(progress)
    except OverflowError:  # an integer too large for a float
        return None
    return share if 0.0 <= share <= 1.0 else None  # NaN compares false


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
        webhook: Webhook | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        max_result_bytes: int = MAX_RESULT_BYTES,
    ) -> None:
        if not api_key:
            raise AuthenticationError("no API key: set BFL_API_KEY")
        self.api_base = check_api_base(api_base, api_key)
        self._name = name
        self.limiter = limiter or ActiveTaskLimiter()
        self.retry = retry or RetryPolicy()
        self.polling = polling or PollPolicy()
        self.latencies = latencies or LatencyTracker()
        self.webhook = webhook
        self._clock = clock
        self._rng = rng or random.Random()
        self._unknown: set[str] = set()  # the unknown statuses warned about
        self.api = Exchanges(client=client, api_key=api_key, retry=self.retry,
                             limiter=self.limiter, sleep=sleep, clock=clock, rng=self._rng,
                             max_result_bytes=max_result_bytes)

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"BflProvider(name={self._name!r}, api_base={self.api_base!r})"

    async def aclose(self) -> None:
        await self.api.client.aclose()

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
            error.message = self.api.blot(error.message)
            error.details = self.api.blot(error.details) if error.details else error.details
            error.args = (error.message,)
            raise

    def _blot_event(self, event: ProviderEvent) -> ProviderEvent:
        if event.message and self.api.leaks(event.message):
            return replace(event, message=self.api.blot(event.message))
        return event

    async def _generate(self, request: EditRequest, emit: EventSink, resume: Accepted | None,
                        on_accepted: AcceptedSink | None) -> EditResult:
        task = TaskState(request, emit)
        task.event("queued")
        if resume is not None:
            try:
                return await self._collect(task, resume)
            except TaskLostError as lost:
                task.event("retrying", message=f"{lost}; submitting it again")
                task = TaskState(request, task.emit)
        async with self.limiter.slot(request.model):
            content = await self._build(task)
            await self.api.submit(task, content, self.api_base)
            del content  # a task that is polling holds no image in memory
            if on_accepted is not None:
                await on_accepted(Accepted(task.task_id, task.polling_url, self.api_base,
                                           task.cost, time.time()))
            result = await self._poll(task)
        return await self._finish(task, result)

    async def _collect(self, task: TaskState, accepted: Accepted) -> EditResult:
        """Poll for and download the result of a task accepted by an earlier run."""
        task.task_id, task.polling_url, task.cost = (accepted.task_id, accepted.polling_url,
                                                     accepted.cost)
        task.resumed = True
        if accepted.api_base != self.api_base:
            raise TaskLostError(f"{task.label}: task {task.task_id} of an earlier run was "
                                f"accepted by {accepted.api_base}, not {self.api_base}")
        age = time.time() - accepted.submitted_at  # a journal is not trusted with the clock
        task.submitted_at = self._clock() - (min(max(0.0, age), self.polling.deadline)
                                             if math.isfinite(age) else 0.0)
        if self.api.holds_key(task.polling_url) or self.api.holds_key(task.task_id):
            raise TaskLostError(f"{task.label}: a task of an earlier run was journalled with "
                                "the API key in its id or polling URL; they are not used")
        check_polling_host(task.label, self.api_base, task.polling_url)
        task.event("submitted", message=f"collecting task {task.task_id} of an earlier run")
        async with self.limiter.slot(task.request.model):
            try:
                result = await self._poll(task)
            except TaskFailedError as exc:
                if exc.status != "Task not found":
                    raise
                raise TaskLostError(f"{task.label}: task {task.task_id} of an earlier run "
                                    "is no longer known to the API") from exc
        try:
            return await self._finish(task, result)
        except InvalidResultError as exc:
            raise TaskLostError(f"{task.label}: the result of task {task.task_id} of an "
                                f"earlier run can no longer be downloaded ({exc})") from exc

    async def _build(self, task: TaskState) -> bytes:
        """The submit's body, built once whatever the retries (it is dropped once submitted)."""
        hook = self.webhook
        extra = {"webhook_url": hook.url, "webhook_secret": hook.secret} if hook else None
        if not task.request.images:  # a prompt alone: nothing to read or encode, no thread
            return request_body(task.request, extra)
        try:
            return await asyncio.to_thread(request_body, task.request, extra)
        except OSError as exc:  # an input vanished since the plan hashed it
            raise ProviderError(f"{task.label}: cannot read an input image "
                                f"({exc.strerror or exc}: {exc.filename})") from exc
        except ChangedInputError as exc:
            raise ProviderError(f"{task.label}: input image {exc.index + 1} is not the one "
                                f"planned (sha256 {exc.actual[:12]}, expected "
                                f"{exc.expected[:12]}): it changed on disk, or its cache "
                                "object is damaged; nothing was submitted") from None

    async def _finish(self, task: TaskState, result: Mapping[str, Any]) -> EditResult:
        """Download and check the image a Ready task points at."""
        sample = result.get("sample") if isinstance(result, dict) else None
        if not isinstance(sample, str) or not sample:
            raise InvalidResultError(f"{task.label}: the API said Ready but gave no result URL")
        task.event("downloading")
        data, info = await self.api.download(task, sample)
        task.event("done")
        seed = result.get("seed")
        return EditResult(image=data, image_format=info.format.lower(), width=info.width,
                          height=info.height, request_id=task.task_id,
                          seed=seed if isinstance(seed, int) else None, cost=task.cost,
                          polls=task.polls, submitted_at=task.submitted_at,
                          finished_at=self._clock())

    def _learnt(self, kind: str) -> Learnt:
        """What finished tasks of ``kind`` taught; with a webhook, nothing: the polls are a
        slow fallback, at the policy's own pace."""
        return Learnt() if self.webhook else self.latencies.learnt(kind)

    async def _poll(self, task: TaskState) -> Mapping[str, Any]:
        """Wait for the task's terminal status; the result of a Ready one."""
        try:
            return await self._poll_until_terminal(task)
        finally:
            if self.webhook is not None:
                self.webhook.inbox.forget(task.task_id)

    async def _poll_until_terminal(self, task: TaskState) -> Mapping[str, Any]:
        kind = latency_kind(task.request)
        timer = PollTimer(self.polling, self._rng)
        deadline = self._clock() - task.submitted_at + self.polling.deadline
        task.deadline_at = task.submitted_at + deadline  # the polls' own deadlines end there
        failures = 0
        while True:
            elapsed, body = await self._wait_due(task, timer, kind, deadline)
            if body is None:
                task.polls += 1
                body, failure, retry_after = await self.api.poll_once(task)
                if body is None:
                    failures += 1
                    if failures >= self.retry.attempts:
                        raise ProviderUnavailableError(
                            f"{task.label}: polling failed {failures} times in a row; last: "
                            f"{failure} (task {task.task_id})")
                    delay = self.retry.delay(failures, self._rng, retry_after)
                    timer.retry(self._clock() - task.submitted_at, delay)
                    task.event("retrying", message=f"poll: {failure}; retrying in {delay:.1f} s")
                    continue
            failures = 0
            status = str(body.get("status"))
            if status == "Ready":
                if not task.resumed:
                    self.latencies.record(kind, timer.finished(elapsed))
                result = body.get("result")
                return result if isinstance(result, dict) else {}
            if status in TERMINAL:
                raise_for_status(task.label, task.task_id, task.request.prompt, status,
                                 failure_reason(body))
            if status not in IN_FLIGHT:
                self._unfamiliar(task, status)
            fraction = None if self.webhook else share_done(body.get("progress"))
            task.event("polling", progress=fraction)
            self.latencies.observe(kind, fraction)
            timer.pending(Reading(elapsed, status, fraction), self._learnt(kind))

    def _unfamiliar(self, task: TaskState, status: str) -> None:
        """A status this client does not know: the API adds statuses over time, and failing a
        paid task on one would lose its image. It is taken to be in flight; one warning a
        status (a few at most) says so."""
        if status in self._unknown or len(self._unknown) >= MAX_UNKNOWN_WARNINGS:
            return
        self._unknown.add(status)
        shown = status if len(status) <= 60 else status[:59] + "…"
        task.event("warning", message=(
            f"the API answered status {shown!r}, which this client does not know; the task "
            "is taken to be still in flight until it ends or the "
            f"{self.polling.deadline:.0f} s deadline passes"))

    async def _wait_due(self, task: TaskState, timer: PollTimer, kind: str,
                        deadline: float) -> tuple[float, dict[str, Any] | None]:
        """Wait until the next poll is due (a task of the model that finishes meanwhile may
        bring it forward: what it taught is used at once). Returns the elapsed time then, and
        the task's status if the API pushed it meanwhile (no poll is needed then).
        ``deadline``: the elapsed time by which the last poll made is answered."""
        last_call = deadline - 0.01 * self.polling.deadline  # time for its answer to come
        while True:
            elapsed = self._clock() - task.submitted_at
            due = timer.due(self._learnt(kind))
            if due > last_call and (elapsed >= last_call or timer.last_poll >= last_call):
                raise ProviderTimeoutError(
                    f"{task.label}: no result after {self.polling.deadline:.0f} s (task "
                    f"{task.task_id}); it was not submitted again")
            due = min(due, last_call)  # one last look at the deadline, whatever was planned
            if elapsed >= due:
                return elapsed, None
            if self.webhook is not None:
                pushed = await self.webhook.inbox.wait(task.task_id, due - elapsed)
                if pushed is not None:  # a proven status, or (body None) a hint: poll now
                    return self._clock() - task.submitted_at, pushed.body
            else:
                await self.latencies.wait(kind, due - elapsed)
