"""URLs as input: the API base the user gives, and the polling and result URLs the API answers.
None may carry a secret: a URL is shown in messages, stored in journals, and sent to hosts
that must never see the key."""

from __future__ import annotations

from urllib.parse import unquote, unquote_plus

import httpx

from kontext_pipeline.errors import UsageError

__all__ = ["SECRET_LENGTH", "check_api_base", "holds_secret", "shown_url"]

SECRET_LENGTH = 8
"""A key shorter than this (a local stand-in's) is no secret, and would match ordinary words."""

_DECODINGS = 4
"""Percent-encoding is undone up to this many times over."""


def holds_secret(text: str, secret: str) -> bool:
    """Whether ``text`` (a URL) holds ``secret`` anywhere: its host, userinfo, path, query or
    fragment, as it is or percent-encoded (over and over, in either case, ``+`` for a space)."""
    if len(secret) < SECRET_LENGTH:
        return False
    wanted = secret.casefold()
    for decode in (unquote, unquote_plus):
        seen = text
        for _ in range(_DECODINGS + 1):
            if wanted in seen.casefold():
                return True
            decoded = decode(seen)
            if decoded == seen:
                break
            seen = decoded
    return False


def shown_url(url: str) -> str:
    """``url`` as it may be shown or stored: any user name and password masked (``***@``).
    Plain string work, so that even a URL no parser takes is shown masked."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "", url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority = rest[:end]
    if "@" not in authority:
        return url
    return f"{scheme}{separator}***@{authority.rpartition('@')[2]}{rest[end:]}"


def check_api_base(base: str, key: str) -> str:
    """``base`` (without a trailing ``/``) if it is one the key may be sent to and that may be
    shown: an http(s) URL with no user name or password in it, and not holding the key."""
    if holds_secret(base, key):
        raise UsageError("the API base URL holds the API key, which goes in BFL_API_KEY only; "
                         "remove it from --api-base or BFL_API_BASE")
    shown = shown_url(base)
    scheme, _, rest = base.partition("://")
    if scheme not in ("http", "https") or not rest.split("/", 1)[0]:
        raise UsageError(f"the API base URL '{shown}' is not an http:// or https:// URL; check "
                         "--api-base or BFL_API_BASE")
    try:
        userinfo = httpx.URL(base).userinfo
    except (httpx.InvalidURL, ValueError):
        raise UsageError(f"the API base URL '{shown}' is not a valid URL; check --api-base or "
                         "BFL_API_BASE") from None
    if userinfo or shown != base:
        raise UsageError(f"the API base URL '{shown}' holds a user name or password: BFL needs "
                         "none (the key goes in BFL_API_KEY), and the URL is shown and stored; "
                         "remove it from --api-base or BFL_API_BASE")
    return base.rstrip("/")
