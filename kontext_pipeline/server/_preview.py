"""The offline preview provider: the bundled BFL-compatible server, in-process.

It goes through exactly the client code of the real API (:class:`BflProvider`) over an ASGI
transport, so a recipe runs end to end with no key and no network. Its pictures are clearly
marked PREVIEW and are deterministic; the provider's name keeps them apart in the cache. Its
tasks go through the 2026 API's phases (Pending, Reasoning, Generating) as time passes: a poll
may skip one, as it may with BFL. Its URLs are made from ``PREVIEW_BASE``; it pushes results
to the run's webhook (the one host, besides loopback, it may post to).
"""

from __future__ import annotations

from kontext_pipeline.providers._inbox import Webhook
from kontext_pipeline.providers._policies import WEBHOOK_FALLBACK, ActiveTaskLimiter, PollPolicy
from kontext_pipeline.providers.bfl import BflProvider, asgi_client
from kontext_pipeline.server._app import create_app
from kontext_pipeline.server._state import ServerConfig
from kontext_pipeline.server._targets import url_host

__all__ = ["PREVIEW_BASE", "PREVIEW_LATENCY", "preview_config", "preview_provider"]

PREVIEW_BASE = "http://preview.kontext-pipeline.invalid"
PREVIEW_LATENCY = 0.4
"""Seconds a preview task takes: long enough to see progress, short enough not to wait."""


def preview_config(latency: float, webhook: Webhook | None) -> ServerConfig:
    """The in-process server's settings: its URLs on ``PREVIEW_BASE``, and the run's own
    webhook host allowed besides loopback (the run asked for its results there)."""
    hook_host = url_host(webhook.url) if webhook else None
    return ServerConfig(latency=latency, url_ttl=3600.0, phases=True, every_phase=False,
                        public_url=PREVIEW_BASE,
                        webhook_hosts=frozenset({hook_host}) if hook_host else frozenset())


def preview_provider(*, latency: float = PREVIEW_LATENCY, concurrency: int = 24,
                     webhook: Webhook | None = None) -> BflProvider:
    """A provider backed by the bundled server, in this process (which pushes results to
    ``webhook`` like BFL, if one is given)."""
    app = create_app(preview_config(latency, webhook))
    polling = WEBHOOK_FALLBACK if webhook else PollPolicy(first=min(0.5, latency / 2 or 0.05))
    return BflProvider(client=asgi_client(app), api_key="preview", api_base=PREVIEW_BASE,
                       name="preview", limiter=ActiveTaskLimiter(concurrency),
                       polling=polling, webhook=webhook)
