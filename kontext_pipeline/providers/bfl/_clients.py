"""The HTTP clients the provider is given: one for the network, one for an in-process app."""

from __future__ import annotations

import ssl
from typing import Any

import httpx

__all__ = ["asgi_client", "http_client"]

_USER_AGENT = f"kontext-pipeline httpx/{httpx.__version__}"
_HEADERS = {"user-agent": _USER_AGENT, "accept-encoding": "gzip, deflate"}
"""Only the encodings that answers are decoded from, within bounds (see :mod:`.reading`)."""

# few connections: requests are short, and httpcore scans every pooled connection for each
# request it assigns
_LIMITS = httpx.Limits(max_connections=16, max_keepalive_connections=16)


def http_client(*, timeout: float = 30.0) -> httpx.AsyncClient:
    """An HTTP client suited to the API: no redirects followed (they could carry the key).
    Its timeouts bound each read; the provider bounds each exchange as a whole."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=10.0),
        limits=_LIMITS,
        transport=_SchemeTransports(),
        headers=_HEADERS,
        follow_redirects=False,
    )


class _SchemeTransports(httpx.AsyncBaseTransport):
    """httpx's own transport, one per URL scheme, each made when the scheme is first used:
    the one for ``https`` loads the CA certificates (verifying as httpx does by default), which
    takes longer than all the rest of a run's start, and a run against a plain-HTTP server
    (the bundled one, a local proxy) never needs them."""

    def __init__(self) -> None:
        self._made: dict[str, httpx.AsyncHTTPTransport] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        scheme = request.url.scheme
        transport = self._made.get(scheme)
        if transport is None:
            transport = self._made[scheme] = _transport(scheme)
        return await transport.handle_async_request(request)

    async def aclose(self) -> None:
        made, self._made = list(self._made.values()), {}
        for transport in made:
            await transport.aclose()


def _transport(scheme: str) -> httpx.AsyncHTTPTransport:
    if scheme == "https":
        return httpx.AsyncHTTPTransport(limits=_LIMITS)
    # plain HTTP makes no TLS connection; were one ever made, this context, which trusts no
    # certificate, would refuse it rather than make it unverified
    return httpx.AsyncHTTPTransport(verify=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT),
                                    limits=_LIMITS)


def asgi_client(app: Any) -> httpx.AsyncClient:
    """A client whose requests go straight to an ASGI app, in-process (the preview provider)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                             headers=_HEADERS, follow_redirects=False,
                             timeout=httpx.Timeout(60.0))
