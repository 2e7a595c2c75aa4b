"""The BFL-compatible ASGI application.

Endpoints as BFL's: ``POST /v1/<model>`` for each model of the models table (``x-key``
required; FLUX.2's results at the requested size or the one that follows the first input, each
submit answered with its ``cost`` by the server's own prices (:mod:`._pricing`) for the decoded
sizes, unrounded, ``input_mp`` and ``output_mp``), polling at the
returned ``polling_url`` (``/{region}/v1/get_result?id=``, a different path than the legacy
``/v1/get_result?id=``, which works too) and signed result URLs that expire
(``/delivery/{id}/sample.{ext}?se=…&sig=…``, no key). Tasks answer ``Pending`` (or the 2026
phases, see :class:`ServerConfig`) while in flight, with ``progress``.

Prompts can ask for outcomes: ``[[request-moderated]]``, ``[[content-moderated]]``,
``[[error]]``, ``[[task-not-found]]``, ``[[status:Anything]]`` and ``[[never]]`` (stays Pending).

What it takes is bounded (:mod:`~kontext_pipeline.server._limits`), the URLs it hands out are
made from its configured base (:func:`~kontext_pipeline.server._network.public_base`), and its
webhooks go where it allows (:mod:`~kontext_pipeline.server._targets`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import os
import re
import time
import uuid
from concurrent.futures import Future
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from kontext_pipeline._support.threads import background_pool
from kontext_pipeline.recipe._models import MODELS, output_size
from kontext_pipeline.server._imaging import RenderSpec, render
from kontext_pipeline.server._limits import read_body, signed_query, task_id_errors, too_large
from kontext_pipeline.server._network import (
    ConnectionDropped,
    DroppedResponse,
    Network,
    public_base,
)
from kontext_pipeline.server._notify import deliver
from kontext_pipeline.server._pricing import charge, followed_size
from kontext_pipeline.server._state import (
    ServerConfig,
    ServerState,
    TaskRecord,
    submit_digest,
    task_latency,
)
from kontext_pipeline.server._stats import stats_body
from kontext_pipeline.server._targets import (
    Resolver,
    WebhookTarget,
    system_resolver,
    webhook_target,
)
from kontext_pipeline.server._validation import Submission, validate_submission

__all__ = ["ConnectionDropped", "create_app"]

_TRIGGER = re.compile(r"\[\[(?P<name>[a-z-]+)(?::(?P<arg>[^\]]+))?\]\]")
_OUTCOMES = {
    "request-moderated": "Request Moderated",
    "content-moderated": "Content Moderated",
    "error": "Error",
    "task-not-found": "Task not found",
}
_MODERATION_DETAILS = {"Moderation Reasons": ["Derivative Works Filter"]}
_MEDIA = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


# pictures are drawn while tasks are pending, at a low priority: they must not slow down
# answering requests (or a client on the same machine)
_RENDERERS = background_pool(os.cpu_count() or 2, "bfl-render")


def create_app(config: ServerConfig | None = None, state: ServerState | None = None, *,
               resolve: Resolver = system_resolver) -> ASGIApp:
    """The server application. Pass ``state`` to read what it saw (tests do), and ``resolve``
    to decide what webhook host names resolve to."""
    service = _Service(state or ServerState(config or ServerConfig()), resolve)
    routes = [
        *(Route(model.endpoint, service.submit, methods=["POST"]) for model in MODELS.values()),
        Route("/v1/get_result", service.get_result, methods=["GET"]),
        Route("/{region}/v1/get_result", service.get_result, methods=["GET"]),
        Route("/delivery/{task_id}/sample.{ext}", service.delivery, methods=["GET"]),
        Route("/_stats", service.stats, methods=["GET"]),
    ]
    return Network(Starlette(routes=routes), service.state, service.drops)


class _Service:
    """The endpoints, over one :class:`ServerState`."""

    def __init__(self, state: ServerState, resolve: Resolver) -> None:
        self.state = state
        self.config = state.config
        self._resolve = resolve
        self._notifying: set[asyncio.Future[None]] = set()  # webhooks on their way

    def _unauthenticated(self, request: Request) -> Response | None:
        """401 without a key, 403 with one this server does not accept."""
        key = request.headers.get("x-key")
        if not key:
            return JSONResponse({"detail": "Not authenticated: send your API key in the x-key "
                                           "header"}, status_code=401)
        if self.config.api_keys is not None and key not in self.config.api_keys:
            return JSONResponse({"detail": "Invalid API key"}, status_code=403)
        return None

    def _refusal(self, request: Request, *, submit: bool) -> Response | None:
        """Authentication, credits and injected faults: an answer other than the real one."""
        unauthenticated = self._unauthenticated(request)
        if unauthenticated is not None:
            return unauthenticated
        if submit and request.headers["x-key"] in self.config.no_credit_keys:
            return JSONResponse({"detail": "Insufficient credits"}, status_code=402)
        return self._fault("submit" if submit else "poll")

    def _fault(self, endpoint: str) -> Response | None:
        fault = self._pick_fault(endpoint)
        return self._fault_response(fault) if fault else None

    def drops(self, endpoint: str) -> bool:
        """Whether the network drops this request before the service sees it (a scripted
        ``"drop"`` next in line, else one drawn at ``drop_rate``): a dropped submit is not
        accepted."""
        state = self.state
        return state.scripted_fault(endpoint, only="drop") is not None or (
            endpoint != "download" and state.roll(self.config.faults.drop_rate))

    def _pick_fault(self, endpoint: str) -> str | None:
        """A scripted fault, else one drawn at the configured rates, else None."""
        faults, state = self.config.faults, self.state
        fault = state.scripted_fault(endpoint)
        if fault is None:
            if endpoint == "submit" and state.roll(faults.submit_error_rate, state.submit_rng):
                fault = str(state.submit_rng.choice((500, 502, 503, 504)))
            elif state.roll(faults.error_rate):
                fault = str(state.rng.choice((502, 503) if endpoint == "submit"
                                             else (500, 502, 503)))
            elif endpoint != "download" and state.roll(faults.throttle_rate):
                fault = "429"
            elif endpoint == "download" and state.roll(faults.truncate_rate):
                fault = "truncate"
        return fault

    def _fault_response(self, fault: str) -> Response | None:
        if fault.isdigit() and fault != "429":
            return JSONResponse({"detail": "Internal server error"}, status_code=int(fault))
        if fault.startswith("429"):
            return self._too_many("Rate limit exceeded", retry_after=fault == "429")
        return None  # download faults are answered by the delivery endpoint itself

    def _too_many(self, detail: str, *, retry_after: bool = True) -> Response:
        seconds = self.config.retry_after if retry_after else None
        headers = {"Retry-After": str(seconds)} if seconds else None
        return JSONResponse({"detail": detail}, status_code=429, headers=headers)

    def _over_limit(self, model: str, now: float) -> Response | None:
        config, state = self.config, self.state
        model_limit = config.model_limits.get(model, config.active_limit)
        if state.active(now) >= config.active_limit:
            return self._too_many(f"Too many active tasks (limit {config.active_limit})")
        if state.active(now, model) >= model_limit:
            return self._too_many(f"Too many active tasks of {model} (limit {model_limit})")
        return None

    async def submit(self, request: Request) -> Response:
        arrived = time.time()
        refusal = self._refusal(request, submit=True)
        if refusal is not None:
            return refusal
        model = request.url.path.rsplit("/", 1)[1]
        received = await self._received(request, model)
        if isinstance(received, Response):
            return received
        body, submission, target = received
        now = time.monotonic()
        over = self._over_limit(model, now)
        if over is not None:
            return over
        task = self._new_task(model, submission, now)
        task.arrived = arrived
        self.state.tasks[task.id] = task
        self.state.submits[submit_digest(model, body)] += 1
        self.state.record_peak(now, model)
        if task.outcome in ("Ready", "Content Moderated") and math.isfinite(task.ready_at):
            task.rendering = self._start_render(task, submission)
        base = public_base(request.scope, self.config.public_url)
        if target is not None and math.isfinite(task.ready_at):
            notifying = asyncio.ensure_future(self._notify(
                task, target, submission.webhook_secret, base))
            self._notifying.add(notifying)
            notifying.add_done_callback(self._notifying.discard)
        answer: dict[str, Any] = {"id": task.id}
        if self.config.echo_cost:
            answer.update(cost=task.cost, input_mp=round(submission.input_pixels / 1e6, 2),
                          output_mp=round(task.size[0] * task.size[1] / 1e6, 2))
        if self.config.return_polling_url:
            answer["polling_url"] = f"{base}/{self.config.region}/v1/get_result?id={task.id}"
        return JSONResponse(answer)

    async def _received(self, request: Request, model: str) -> tuple[
            dict[str, Any], Submission, WebhookTarget | None] | Response:
        """A submit's body, read within the limits, valid, with its webhook's target; or the
        answer that refuses it (413, 422)."""
        raw = await read_body(request, self.config.max_body_bytes)
        if raw is None:
            return too_large(self.config.max_body_bytes)
        try:
            body = json.loads(raw, parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:
            why = exc if isinstance(exc, ValueError) else "nested too deeply"
            return JSONResponse({"detail": [{"type": "json_invalid", "loc": ["body", 0],
                                             "msg": f"JSON decode error: {why}", "input": {}}]},
                                status_code=422)
        _log_body(request, body)
        submission, errors = await run_in_threadpool(validate_submission, body, model)
        if submission is None:
            return JSONResponse({"detail": errors}, status_code=422)
        if not submission.webhook_url:
            return body, submission, None
        target = await webhook_target(
            submission.webhook_url, allowed_hosts=self.config.webhook_hosts,
            anywhere=self.config.webhooks_anywhere, resolve=self._resolve)
        if isinstance(target, str):
            return JSONResponse({"detail": [{"type": "value_error", "loc": ["body", "webhook_url"],
                                             "msg": target, "input": submission.webhook_url}]},
                                status_code=422)
        return body, submission, target

    def _new_task(self, model: str, submission: Submission, now: float) -> TaskRecord:
        latency = task_latency(self.config, model, submission.prompt)
        seed = submission.seed if submission.seed is not None else self.state.rng.randrange(2**32)
        phases = self.config.in_flight()
        first = submission.input_sizes[0] if submission.input_sizes else None
        if MODELS[model].sizes is None:  # Kontext: its grid, by the ratio asked for or the input's
            size = output_size(model, aspect_ratio=submission.aspect_ratio, source=first)
        elif submission.width and submission.height:
            size = submission.width, submission.height
        else:
            size = followed_size(first)
        cost = charge(model, size, submission.input_sizes)
        task = TaskRecord(
            id=str(uuid.uuid4()), model=model, prompt=submission.prompt, seed=seed,
            params={"aspect_ratio": submission.aspect_ratio,
                    "output_format": submission.output_format},
            images=submission.images, created=now, ready_at=now + latency, phases=phases,
            stepwise=self.config.every_phase and len(phases) > 1, started=time.time(),
            latency=latency, size=size, cost=cost)
        for match in _TRIGGER.finditer(submission.prompt):
            name, arg = match["name"], match["arg"]
            if name in _OUTCOMES:
                task.outcome = _OUTCOMES[name]
            elif name == "status" and arg:
                task.outcome = arg
            elif name == "never":
                task.ready_at = math.inf
        if "Moderated" in task.outcome:
            task.details = dict(_MODERATION_DETAILS)
        return task

    def _start_render(self, task: TaskRecord, submission: Submission) -> Future[bytes]:
        """Draw the result while the task is pending (in threads: event-loop independent)."""
        spec = RenderSpec(images=submission.images, prompt=submission.prompt, seed=task.seed,
                          model=task.model, aspect_ratio=submission.aspect_ratio,
                          output_format=submission.output_format,
                          watermark=self.config.watermark,
                          size=task.size if MODELS[task.model].sizes is not None else None)
        return _RENDERERS.submit(render, spec)

    async def get_result(self, request: Request) -> Response:
        refusal = self._refusal(request, submit=False)
        if refusal is not None:
            return refusal
        errors = task_id_errors(request.query_params)
        if errors:
            return JSONResponse({"detail": errors}, status_code=422)
        task_id = request.query_params["id"]
        task = self.state.tasks.get(task_id)
        if task is None:
            return JSONResponse({"id": task_id, "status": "Task not found", "result": None,
                                 "progress": None, "details": None})
        task.polls += 1
        return JSONResponse(await self._status_body(
            task, public_base(request.scope, self.config.public_url), poll=True))

    async def _status_body(self, task: TaskRecord, base: str, *, poll: bool) -> dict[str, Any]:
        """A task's status as a poll (or a webhook) tells it; a Ready one is charged then."""
        now = time.monotonic()
        status = task.status(now, poll=poll)
        in_flight = status != task.outcome
        result = None
        if status == "Ready":
            if task.rendering is not None:
                await asyncio.wrap_future(task.rendering)
            if not task.charged:
                self.state.credits_charged = round(self.state.credits_charged + task.cost, 6)
                task.charged = True
            took = task.ready_at - task.created  # when it was made: the same on every poll
            result = {"sample": self._signed_url(base, task), "seed": task.seed,
                      "prompt": task.prompt, "start_time": task.started,
                      "end_time": task.started + took, "duration": round(took, 3)}
        if poll and not in_flight and task.ready_seen is None:
            task.ready_seen = time.time()
        return {"id": task.id, "status": status, "result": result,
                "progress": task.progress(now) if in_flight and self.config.progress else None,
                "details": None if in_flight else task.details}

    async def _notify(self, task: TaskRecord, target: WebhookTarget, secret: str | None,
                      base: str) -> None:
        """Once the task has ended, POST its status to the webhook URL it came with."""
        await asyncio.sleep(max(0.0, task.ready_at - time.monotonic()))
        payload = await self._status_body(task, base, poll=False)
        await deliver(target, secret, payload, self.config.webhook_signature,
                      self.state.webhooks.append)

    def _signature(self, task_id: str, expires: int) -> str:
        return hmac.new(self.config.signing_secret, f"{task_id}:{expires}".encode(),
                        hashlib.sha256).hexdigest()

    def _signed_url(self, base: str, task: TaskRecord) -> str:
        expires = int(time.time() + self.config.url_ttl)
        ext = task.params["output_format"]
        return (f"{base}/delivery/{task.id}/sample.{ext}?se={expires}"
                f"&sig={self._signature(task.id, expires)}")

    async def delivery(self, request: Request) -> Response:
        task = self.state.tasks.get(request.path_params["task_id"])
        signed = signed_query(request.query_params)
        expires = signed[0] if signed else 0
        if (task is None or task.rendering is None or not task.rendering.done() or signed is None
                or not hmac.compare_digest(signed[1], self._signature(task.id, expires))):
            return _azure_error("AuthenticationFailed", "Signature did not match")
        if time.time() > expires:
            return _azure_error("AuthenticationFailed", "Signed expiry time has passed")
        data = task.rendering.result()
        media = _MEDIA[task.params["output_format"]]
        fault = self._pick_fault("download")
        if fault == "truncate":
            return DroppedResponse(data[: len(data) // 2], promised=len(data), media_type=media)
        if fault == "expire":
            return _azure_error("AuthenticationFailed", "Signed expiry time has passed")
        return (self._fault_response(fault) if fault else None) or Response(data,
                                                                            media_type=media)

    async def stats(self, request: Request) -> Response:
        """This server's own counters (:mod:`._stats`). They want a key, as the API's endpoints
        do, unless the server makes them public."""
        refusal = None if self.config.public_stats else self._unauthenticated(request)
        return refusal or JSONResponse(stats_body(self.state))


def _no_constant(name: str) -> Any:
    """NaN and Infinity are not JSON (and could not be echoed back in an error)."""
    raise ValueError(f"{name} is not valid JSON")


def _azure_error(code: str, message: str) -> Response:
    """Signed-URL refusals look like the blob store's that BFL delivers from."""
    return Response(f"<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code>"
                    f"<Message>{message}</Message></Error>", status_code=403,
                    media_type="application/xml")


def _log_body(request: Request, body: Any) -> None:
    """Keep a submit's JSON for the request log, each image replaced by its sha256."""
    if isinstance(body, dict):
        request.state.body = {
            k: hashlib.sha256(str(v).encode()).hexdigest() if k.startswith("input_image") else v
            for k, v in body.items()}
