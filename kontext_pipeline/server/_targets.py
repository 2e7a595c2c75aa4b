"""Where the server may POST webhooks: loopback addresses only, unless it was started to allow
more (``--allow-webhook-host HOST``, ``--webhooks-anywhere``). Otherwise anyone who can reach
the server could have it send requests into the network it sits in.

A webhook's host is resolved once, when the task is submitted; every address it resolves to is
checked, and the webhook is delivered to the checked address (with the URL's host in the
``Host`` header and, over TLS, as the server name), so a name that resolves elsewhere by the
time the task ends (DNS rebinding) cannot send the delivery there.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import httpx

__all__ = [
    "Resolver",
    "WebhookTarget",
    "allowed_host",
    "system_resolver",
    "url_host",
    "webhook_target",
]

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""Resolves a host name and port to IP addresses; raises OSError when it cannot."""

_RESOLVE_TIMEOUT = 5.0
_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST = re.compile(r"[a-z0-9._:-]+")


@dataclass(frozen=True)
class WebhookTarget:
    """A checked webhook URL, and the address it is delivered to."""

    url: str
    address: str
    request_url: str  # ``url`` with the host replaced by ``address``
    host_header: str
    server_name: str | None  # for TLS (SNI and the certificate check); None over plain HTTP


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (at most a few seconds' wait)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), _RESOLVE_TIMEOUT)
    except asyncio.TimeoutError as exc:  # not yet TimeoutError itself on Python 3.10
        raise OSError(f"resolving {host} took over {_RESOLVE_TIMEOUT:g} s") from exc
    return [str(info[4][0]) for info in infos]


def url_host(url: str) -> str | None:
    """The host of ``url`` as webhook hosts are allowed: lower case, IDNA-encoded, IPv6
    without brackets (None if it is not a URL)."""
    try:
        return httpx.URL(url).raw_host.decode("ascii").lower() or None
    except (httpx.InvalidURL, UnicodeDecodeError):
        return None


def allowed_host(value: str) -> str | None:
    """A host given to ``--allow-webhook-host`` (a name, an IPv4 address, an IPv6 one with or
    without brackets) as :func:`url_host` writes it; None if it is none of those."""
    inner = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    if not inner or any(c in inner for c in "/@?#[]") or not inner.isprintable():
        return None
    host = url_host(f"http://[{inner}]/" if ":" in inner else f"http://{inner}/")
    return host if host is not None and _HOST.fullmatch(host) else None


def _loopback(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


async def webhook_target(url: str, *, allowed_hosts: frozenset[str], anywhere: bool,
                         resolve: Resolver) -> WebhookTarget | str:
    """The target ``url`` is delivered to, or why it is refused (a 422 ``msg``)."""
    try:
        parsed = httpx.URL(url)
        port = _DEFAULT_PORTS.get(parsed.scheme, 0) if parsed.port is None else parsed.port
        host = parsed.raw_host.decode("ascii")
    except (httpx.InvalidURL, UnicodeDecodeError):
        parsed, port, host = None, 0, ""
    if parsed is None or parsed.scheme not in _DEFAULT_PORTS or not host or not 0 < port < 65536:
        return ("Value error, webhook_url must be an http or https URL with a host (and a port "
                "from 1 to 65535)")
    literal = _literal(host)
    try:
        found = [literal] if literal is not None else [
            ipaddress.ip_address(a.split("%", 1)[0]) for a in await resolve(host, port)]
    except (OSError, ValueError, UnicodeError):
        found = []
    if not found:
        return f"Value error, webhook_url host {host} could not be resolved"
    allowed = anywhere or url_host(url) in allowed_hosts
    refused = next((a for a in found if not _loopback(a)), None)
    if refused is not None and not allowed:
        which = "" if literal is not None else f" (which {host} resolves to)"
        return (f"Value error, this server delivers webhooks only to loopback addresses, not "
                f"to {refused}{which}; start it with --allow-webhook-host {host} or "
                "--webhooks-anywhere to allow more")
    address = str(found[0])
    try:
        request_url = str(parsed.copy_with(host=address))
    except httpx.InvalidURL:
        return f"Value error, webhook_url host {host} could not be resolved"
    return WebhookTarget(url=url, address=address, request_url=request_url,
                         host_header=parsed.netloc.decode("ascii"),
                         server_name=host if parsed.scheme == "https" and literal is None
                         else None)
