"""Opening a provider by name, configured from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from kontext_pipeline.errors import UsageError

if TYPE_CHECKING:
    from kontext_pipeline.providers import Provider
    from kontext_pipeline.providers._inbox import Webhook

__all__ = ["API_KEY_VARIABLE", "PROVIDERS", "open_provider"]

PROVIDERS = ("bfl", "preview")

API_KEY_VARIABLE = "BFL_API_KEY"


def open_provider(
    name: str,
    *,
    environ: Mapping[str, str],
    api_base: str | None = None,
    concurrency: int = 24,
    webhook: Webhook | None = None,
) -> Provider:
    """The provider called ``name``, configured from ``environ`` (``BFL_API_KEY``,
    ``BFL_API_BASE``). Raises :class:`UsageError` before any work when bfl has no key.
    With ``webhook``, every submit asks the API to push its result there, and polling is only
    a slow fallback."""
    if name == "preview":
        from kontext_pipeline.server._preview import preview_provider  # noqa: PLC0415

        return preview_provider(concurrency=concurrency, webhook=webhook)
    if name != "bfl":
        raise UsageError(f"unknown provider '{name}'; choose one of: {', '.join(PROVIDERS)}")
    key = environ.get(API_KEY_VARIABLE, "").strip()
    if not key:
        raise UsageError(f"{API_KEY_VARIABLE} is not set: the bfl provider needs an API key. "
                         f"Set {API_KEY_VARIABLE}, or run offline with --provider preview")
    if not (key.isascii() and key.isprintable()) or any(c.isspace() for c in key):
        raise UsageError(f"{API_KEY_VARIABLE} holds characters an API key cannot have (only "
                         "printable ASCII without spaces); check how it was set")
    from kontext_pipeline.providers._policies import (  # noqa: PLC0415
        WEBHOOK_FALLBACK,
        ActiveTaskLimiter,
    )
    from kontext_pipeline.providers.bfl import (  # noqa: PLC0415
        DEFAULT_API_BASE,
        BflProvider,
        http_client,
    )
    from kontext_pipeline.providers.bfl._urls import check_api_base  # noqa: PLC0415

    # no user name or password (it would be shown and stored), not the key: exit 2 otherwise
    base = check_api_base(api_base or environ.get("BFL_API_BASE") or DEFAULT_API_BASE, key)
    return BflProvider(client=http_client(), api_key=key, api_base=base,
                       limiter=ActiveTaskLimiter(concurrency), webhook=webhook,
                       polling=WEBHOOK_FALLBACK if webhook else None)
