"""What the local BFL-compatible server knows: its settings, its tasks, and what it has seen."""

from __future__ import annotations

import hashlib
import math
import os
import random
from collections import Counter, deque
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kontext_pipeline.recipe._models import ACCOUNT_LIMIT, MODELS
from kontext_pipeline.server._limits import MAX_BODY_BYTES

if TYPE_CHECKING:
    from kontext_pipeline.server._notify import Delivery

__all__ = [
    "FaultConfig",
    "RequestRecord",
    "ServerConfig",
    "ServerState",
    "TaskRecord",
    "task_latency",
]

@dataclass(frozen=True)
class FaultConfig:
    """Faults to inject, each a probability per request, drawn from a seeded generator.

    ``error_rate``: answer 500/502/503 (a submit gets 502/503 and is not accepted).
    ``submit_error_rate``: answer a submit 500/502/503/504, not accepting it (drawn from a
    generator of its own: the n-th submit's fate does not depend on the polls before it).
    ``throttle_rate``: a spurious 429. ``drop_rate``: close the connection without answering,
    before doing anything (a dropped submit is not accepted). ``truncate_rate``: cut a
    result download short. ``jitter``: a task's latency is drawn uniformly from
    ``[latency, latency + jitter]``, from (``seed``, model, prompt) alone (:func:`task_latency`):
    the same prompt of the same model waits as long whatever order submits arrive in, so two
    clients running one workload against servers started alike face the same latencies.
    """

    error_rate: float = 0.0
    submit_error_rate: float = 0.0
    throttle_rate: float = 0.0
    drop_rate: float = 0.0
    truncate_rate: float = 0.0
    jitter: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class ServerConfig:
    """How the server behaves. ``api_keys`` None accepts any non-empty key.

    A task is in flight for ``latency`` seconds: ``Pending``, or with ``phases`` the 2026 API's
    ``Pending``, ``Reasoning`` and ``Generating``, each for a share of it, with
    ``unknown_status`` (a word no client knows) as one more phase before ``Generating``. With
    ``every_phase``, a poll never skips a phase: each answers at least one poll before the
    next shows (a task may then end later than ``latency``). In flight, ``progress`` is the
    share of its latency passed (to 2 decimals), or, without ``progress``, null: the API does
    not promise one.

    ``public_url``: the base of the polling and result URLs it hands out (default: the address
    of its socket that the request reached; never the request's ``Host`` header). Webhooks go
    to loopback addresses only, unless their host is in ``webhook_hosts`` (lower case) or
    ``webhooks_anywhere``. ``/_stats`` wants a key like the API's endpoints unless
    ``public_stats``. A submit body over ``max_body_bytes`` is refused (413). Without
    ``echo_cost`` a submit's answer has no ``cost``, ``input_mp`` and ``output_mp`` (as older
    answers of the API).
    """

    latency: float = 2.0
    phases: bool = False
    progress: bool = True
    unknown_status: str | None = None
    every_phase: bool = True
    api_keys: frozenset[str] | None = None
    no_credit_keys: frozenset[str] = frozenset({"bfl_no_credits"})
    active_limit: int = ACCOUNT_LIMIT
    model_limits: Mapping[str, int] = field(default_factory=lambda: {
        model.name: model.concurrency for model in MODELS.values()
        if model.concurrency < ACCOUNT_LIMIT})
    url_ttl: float = 600.0
    return_polling_url: bool = True
    echo_cost: bool = True
    retry_after: int | None = 1
    faults: FaultConfig = FaultConfig()
    watermark: str = "PREVIEW"
    region: str = "eu4"
    webhook_signature: str = "hmac"  # how webhooks are signed: "hmac", "secret" or "both"
    signing_secret: bytes = field(default_factory=lambda: os.urandom(32), repr=False)
    public_url: str | None = None
    webhook_hosts: frozenset[str] = frozenset()
    webhooks_anywhere: bool = False
    public_stats: bool = False
    max_body_bytes: int = MAX_BODY_BYTES

    def in_flight(self) -> tuple[str, ...]:
        """The statuses a task answers before its outcome, in order."""
        middle = (self.unknown_status,) if self.unknown_status else ()
        return ("Pending", "Reasoning", *middle, "Generating") if self.phases else (
            "Pending", *middle)


@dataclass
class TaskRecord:
    """One submitted task. It is active until ``ready_at``, answering its ``phases`` in turn
    (with ``stepwise``, at most one further phase a poll); then its ``outcome`` shows.
    ``started``: the epoch time of its submit; ``latency``: the seconds drawn for it; ``polls``:
    the polls answered about it; ``ready_seen``: the epoch time of the first poll that answered
    its outcome."""

    id: str
    model: str
    prompt: str
    seed: int
    params: dict[str, Any]
    images: list[bytes]
    created: float
    ready_at: float
    outcome: str = "Ready"
    details: dict[str, Any] | None = None
    charged: bool = False
    size: tuple[int, int] = (1024, 1024)  # the result's (width, height)
    cost: float = 0  # credits, charged once it is Ready (the server's own price, _pricing)
    rendering: Future[bytes] | None = None
    phases: tuple[str, ...] = ("Pending",)
    stepwise: bool = False
    started: float = 0.0
    arrived: float = 0.0  # the epoch time its submit request reached the server
    latency: float = 0.0
    polls: int = 0
    ready_seen: float | None = None
    shown: int = -1  # the latest phase answered (len(phases): the outcome)
    statuses: list[str] = field(default_factory=list)  # as answered, each change once

    def status(self, now: float, *, poll: bool = True) -> str:
        """The status a poll (or, ``poll`` False, a webhook) answers now."""
        if self.outcome == "Request Moderated":
            return self.outcome
        stage = len(self.phases)
        if now < self.ready_at:
            share = (now - self.created) / (self.ready_at - self.created)
            stage = min(len(self.phases) - 1, int(share * len(self.phases)))
        if poll and self.stepwise:
            stage = min(stage, self.shown + 1)
        self.shown = max(self.shown, stage)
        status = self.phases[stage] if stage < len(self.phases) else self.outcome
        if not self.statuses or self.statuses[-1] != status:
            self.statuses.append(status)
        return status

    def active(self, now: float) -> bool:
        return self.outcome != "Request Moderated" and now < self.ready_at

    def progress(self, now: float) -> float | None:
        if not math.isfinite(self.ready_at):
            return 0.0
        span = self.ready_at - self.created
        return 1.0 if span <= 0 else round(min(1.0, max(0.0, (now - self.created) / span)), 2)


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it (``body``: a submit's JSON, images as their sha256)."""

    method: str
    path: str
    query: str
    key: str | None
    status: int
    body: dict[str, Any] | None = None


@dataclass
class ServerState:
    """Tasks, request log and counters; tests read these to see what the client did."""

    config: ServerConfig
    tasks: dict[str, TaskRecord] = field(default_factory=dict)
    requests: list[RequestRecord] = field(default_factory=list)
    submits: Counter[str] = field(default_factory=Counter)
    peak_active: int = 0
    peak_by_model: Counter[str] = field(default_factory=Counter)
    credits_charged: float = 0
    last_download: float | None = None  # epoch time the last full result download was sent
    webhooks: list[Delivery] = field(default_factory=list)
    scripted: dict[str, deque[str]] = field(default_factory=dict)
    rng: random.Random = field(init=False)
    submit_rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.config.faults.seed)
        self.submit_rng = random.Random(f"submit {self.config.faults.seed}")

    def active(self, now: float, model: str | None = None) -> int:
        return sum(1 for t in self.tasks.values()
                   if t.active(now) and (model is None or t.model == model))

    def record_peak(self, now: float, model: str) -> None:
        self.peak_active = max(self.peak_active, self.active(now))
        self.peak_by_model[model] = max(self.peak_by_model[model], self.active(now, model))

    def script(self, endpoint: str, *faults: str) -> None:
        """Answer the next requests to ``endpoint`` (``submit``, ``poll`` or ``download``) with
        these faults, in order: ``"500"``, ``"502"``, ``"503"``, ``"429"`` (with Retry-After),
        ``"429-bare"`` (without), ``"drop"``, and for downloads ``"truncate"`` and ``"expire"``.
        """
        if endpoint not in ("submit", "poll", "download"):
            raise ValueError(f"unknown endpoint {endpoint!r}")
        self.scripted.setdefault(endpoint, deque()).extend(faults)

    def scripted_fault(self, endpoint: str, only: str | None = None) -> str | None:
        """The next scripted fault of ``endpoint`` (only if it is ``only``, when given)."""
        queue = self.scripted.get(endpoint)
        if not queue or (only is not None and queue[0] != only):
            return None
        return queue.popleft()

    def roll(self, rate: float, rng: random.Random | None = None) -> bool:
        """True with probability ``rate`` (from ``rng``, else the seeded generator)."""
        return rate > 0 and (rng or self.rng).random() < rate

    def paths(self, method: str | None = None) -> list[str]:
        """The paths requested, in order (optionally of one method)."""
        return [r.path for r in self.requests if method is None or r.method == method]


def task_latency(config: ServerConfig, model: str, prompt: str) -> float:
    """Seconds a task of ``model`` with ``prompt`` stays in flight: ``latency`` plus a share of
    ``jitter`` drawn from (fault seed, model, prompt), not from the shared generator, so that it
    does not depend on what was submitted before."""
    jitter = config.faults.jitter
    if not jitter:
        return config.latency
    digest = hashlib.sha256(f"{config.faults.seed}\0{model}\0{prompt}".encode()).digest()
    return config.latency + jitter * int.from_bytes(digest[:8], "big") / 2**64


def submit_digest(model: str, body: Mapping[str, Any]) -> str:
    """Identity of a submit's content, to count submits of the same request."""
    hasher = hashlib.sha256(model.encode())
    for key in sorted(body):
        hasher.update(f"\0{key}\0{body[key]!r}".encode())
    return hasher.hexdigest()
