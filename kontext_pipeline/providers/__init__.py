"""Image providers: the :class:`Provider` protocol a run talks to, and ``bfl`` (the only
package whose client code imports httpx). The preview stand-in lives beside the bundled server
(:mod:`kontext_pipeline.server`), and :func:`kontext_pipeline.open_provider` opens either by
name."""

from __future__ import annotations

from kontext_pipeline.providers._base import (
    EditRequest,
    EditResult,
    EventSink,
    Provider,
    ProviderEvent,
)

__all__ = ["EditRequest", "EditResult", "EventSink", "Provider", "ProviderEvent"]
