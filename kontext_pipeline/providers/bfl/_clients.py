"""The HTTP clients the provider is given: one for the network, one for an in-process app."""

from __future__ import annotations

from typing import Any

import httpx

__all__ = ["asgi_client", "http_client"]

_USER_AGENT = f"kontext-pipeline httpx/{httpx.__version__}"
_HEADERS = {"user-agent": _USER_AGENT, "accept-encoding": "gzip, deflate"}
"""Only the encodings that answers are decoded from, within bounds (see :mod:`.reading`)."""


def http_client(*, timeout: float = 30.0) -> httpx.AsyncClient:
    """An HTTP client suited to the API: no redirects followed (they could carry the key).
    Its timeouts bound each read; the provider bounds each exchange as a whole."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=10.0),
        # few connections: requests are short, and httpcore scans every pooled connection for
        # each request it assigns
        limits=httpx.Limits(max_connections=16, max_keepalive_connections=16),
        headers=_HEADERS,
        follow_redirects=False,
    )


def asgi_client(app: Any) -> httpx.AsyncClient:
    """A client whose requests go straight to an ASGI app, in-process (the preview provider)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                             headers=_HEADERS, follow_redirects=False,
                             timeout=httpx.Timeout(60.0))
