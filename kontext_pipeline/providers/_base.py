"""What the executor asks of an image provider, and what it gets back."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

__all__ = [
    "Accepted",
    "AcceptedSink",
    "EditRequest",
    "EditResult",
    "EventSink",
    "Provider",
    "ProviderEvent",
    "request_params",
]


@dataclass(frozen=True)
class EditRequest:
    """One image request: the rendered prompt, a concrete seed, parameters with defaults explicit
    and each input image (reference), in recipe order: its bytes, or a file that the provider
    reads only once the request has an active-task slot (so waiting requests hold no image in
    memory). A parameter that is None is not sent (``aspect_ratio``, ``width``, ``height``: the
    model's own choice), nor is one the model does not take (see ``Model.body_fields``)."""

    model: str
    prompt: str
    seed: int
    aspect_ratio: str | None = None
    output_format: str = "png"
    safety_tolerance: int = 2
    prompt_upsampling: bool = False
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None
    images: tuple[bytes | Path, ...] = field(default=(), repr=False)
    image_sha256: tuple[str, ...] = ()  # when given, what each image read must hash to
    label: str = ""  # how events and messages name the task, e.g. "poster/default/recolor"


@dataclass(frozen=True)
class EditResult:
    """A finished image. ``cost`` is in credits when the API reported it (FLUX.2's may be
    fractional)."""

    image: bytes = field(repr=False)
    image_format: str
    width: int
    height: int
    request_id: str
    seed: int | None
    cost: float | None
    polls: int
    submitted_at: float
    finished_at: float

    @property
    def duration_s(self) -> float:
        return self.finished_at - self.submitted_at


def request_params(request: EditRequest) -> dict[str, Any]:
    """The request fields of ``request`` by their recipe names (as ``Params.as_dict`` names
    them), for ``Model.body_fields``."""
    return {"aspect_ratio": request.aspect_ratio, "width": request.width,
            "height": request.height, "steps": request.steps, "guidance": request.guidance,
            "output_format": request.output_format,
            "safety_tolerance": request.safety_tolerance,
            "prompt_upsampling": request.prompt_upsampling}


@dataclass(frozen=True)
class Accepted:
    """A request the API accepted: what finds its result again, in this run or a later one.
    ``submitted_at`` is in seconds since the epoch; ``cost`` in credits, when the API said."""

    task_id: str
    polling_url: str
    api_base: str
    cost: float | None
    submitted_at: float


AcceptedSink = Callable[[Accepted], Awaitable[None]]
"""Told of each accepted request before its result is awaited (to journal it durably)."""

EventKind = Literal["queued", "submitted", "polling", "retrying", "downloading", "done",
                    "warning"]


@dataclass(frozen=True)
class ProviderEvent:
    """Progress of one request, for live displays. Never carries the API key or signed URLs."""

    label: str
    kind: EventKind
    request_id: str | None = None
    progress: float | None = None
    message: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


EventSink = Callable[[ProviderEvent], None]


class Provider(Protocol):
    """Makes images. ``name`` is part of every cache key, so results of different providers
    never mix."""

    @property
    def name(self) -> str: ...

    async def generate(self, request: EditRequest, on_event: EventSink | None = None, *,
                       resume: Accepted | None = None, on_accepted: AcceptedSink | None = None,
                       ) -> EditResult:
        """Submit, wait for and download one image; raise a ``ProviderError`` on failure.

        ``resume``: the request was accepted earlier (by an interrupted run): collect that
        task's result instead of submitting again, unless the API no longer has it.
        ``on_accepted`` is awaited once a submit is accepted, before its result is awaited.
        """
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
