"""Where a shared cache lives (``s3://bucket/prefix``, ``gs://…``, ``az://…``), opening it
through obstore, and what its failures are called in a warning.

Credentials, region and endpoint come from the library's standard environment (``AWS_*``,
including ``AWS_ENDPOINT_URL``; ``GOOGLE_*``; ``AZURE_*``): nothing of them is in the URL,
which a log may show (a URL holding ``user:password@`` is refused). An ``http://`` endpoint
(MinIO or a test server on the same machine) is allowed because the user set it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING
from urllib.parse import SplitResult, urlsplit

from kontext_pipeline._support.text import printable
from kontext_pipeline.errors import UsageError

if TYPE_CHECKING:
    from obstore.store import ObjectStore

__all__ = ["DEFAULT_TIMEOUT", "SCHEMES", "SharedLocation", "describe_failure", "http_status",
           "open_store"]

SCHEMES = ("s3", "gs", "az")
"""The stores a shared cache may be on: any S3-compatible one, Google Cloud Storage, Azure."""

DEFAULT_TIMEOUT = 60.0
"""Seconds one request to the store may take, retries included (``KONTEXT_SHARED_CACHE_TIMEOUT``
changes it): a 4-megapixel PNG is some 10 MB."""

_CONNECT_TIMEOUT = 5.0
_RETRIES = 2  # a 5xx or a dropped connection is tried twice more, then the store is given up
_ENDPOINTS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT")
_FORM = "s3://BUCKET/PREFIX (or gs://, az://)"


@dataclass(frozen=True)
class SharedLocation:
    """A shared cache's URL, checked: ``scheme://bucket/prefix`` without credentials, query or
    fragment; ``url`` is how messages name it."""

    scheme: str
    bucket: str
    prefix: str

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.prefix}".rstrip("/")

    @classmethod
    def parse(cls, text: str) -> SharedLocation:
        """The location ``text`` names; :class:`UsageError` (exit 2) if it names none."""
        try:
            parts = urlsplit(text.strip())
        except ValueError:
            raise UsageError(f"--shared-cache '{_shown(text)}' is not a URL; write "
                             f"{_FORM}") from None
        where = f"--shared-cache '{_shown(text, parts)}'"  # the message is a log line, too
        if parts.username is not None or parts.password is not None:
            raise UsageError(f"{where} holds credentials, which logs would show; give them in "
                             "the storage's environment variables (AWS_ACCESS_KEY_ID, …) "
                             "instead")
        if parts.scheme not in SCHEMES:
            raise UsageError(f"{where}: the shared cache is on object storage; write {_FORM}")
        if parts.query or parts.fragment:
            raise UsageError(f"{where} has a query or fragment (a signed URL?); write {_FORM}, "
                             "with the credentials in the environment")
        bucket = parts.netloc
        prefix = parts.path.strip("/")
        if not bucket or any(c.isspace() or not c.isprintable() for c in text.strip()):
            raise UsageError(f"{where} names no bucket; write {_FORM}")
        if any(segment in (".", "..") for segment in prefix.split("/")):
            raise UsageError(f"{where}: a prefix of '.' or '..' segments names no folder; write "
                             f"{_FORM}")
        return cls(parts.scheme, bucket, prefix)


def _shown(text: str, parts: SplitResult | None = None) -> str:
    """``text`` as a message may show it: no credentials, query or fragment (a signature)."""
    if parts is None or not (parts.scheme and parts.netloc):
        if not any(c in text for c in "@?#"):
            return printable(text[:200])
        return printable(text[:8]) + "…"
    host = parts.netloc.rpartition("@")[2]
    hidden = "…@" if "@" in parts.netloc else ""
    rest = "?…" if parts.query or parts.fragment else ""
    return printable(f"{parts.scheme}://{hidden}{host}{parts.path}"[:200] + rest)


def open_store(location: SharedLocation, environ: Mapping[str, str], *,
               timeout: float = DEFAULT_TIMEOUT) -> ObjectStore:
    """The obstore store of ``location``, its credentials from the environment. Opening sends no
    request; a configuration the library refuses is a :class:`UsageError`, a store that
    cannot be reached fails on its first use."""
    allow_http = any(environ.get(name, "").lower().startswith("http://") for name in _ENDPOINTS)
    limit = timedelta(seconds=timeout)
    try:
        return _from_url(location, allow_http, limit, timeout)
    except Exception as exc:  # the library checks its configuration here
        raise UsageError(f"--shared-cache {location.url}: the store cannot be opened "
                         f"({describe_failure(exc, timeout)}); check its environment variables "
                         "(AWS_*, GOOGLE_*, AZURE_*)") from exc


def _from_url(location: SharedLocation, allow_http: bool, limit: timedelta,
              timeout: float) -> ObjectStore:
    from obstore.store import from_url  # noqa: PLC0415  (a native library: only when used)

    return from_url(
        location.url,
        client_options={"timeout": limit, "connect_timeout": timedelta(
            seconds=min(_CONNECT_TIMEOUT, timeout)), "allow_http": allow_http},
        retry_config={"max_retries": _RETRIES, "retry_timeout": limit,
                      "backoff": {"init_backoff": timedelta(milliseconds=100),
                                  "max_backoff": timedelta(seconds=2), "base": 2}})


_QUERY = re.compile(r"\?[^\s)\]\"']*")
_STATUS = re.compile(r"(?:status code|Status)[:\s]+(\d{3})")


def describe_failure(error: BaseException, timeout: float = DEFAULT_TIMEOUT) -> str:
    """What went wrong with a request to the store, in a few words: the library's messages run
    to dozens of lines of debug output, which a warning does not repeat."""
    from obstore import exceptions  # noqa: PLC0415

    text = str(error)
    status = http_status(error)
    said = [
        (isinstance(error, exceptions.PermissionDeniedError) or status == 403,
         "access denied (HTTP 403): check the storage credentials (AWS_ACCESS_KEY_ID, …) and "
         "the bucket's policy"),
        (isinstance(error, exceptions.UnauthenticatedError) or status == 401,
         "the storage credentials were refused (HTTP 401)"),
        (isinstance(error, TimeoutError) or "timed out" in text or "Timeout" in text,
         f"no answer within {timeout:g} s"),
        (status is not None and "NoSuchBucket" in text, "the bucket does not exist (HTTP 404)"),
        (status is not None, f"the store answered HTTP {status}"),
        ("onnect" in text or "error sending request" in text, "cannot connect to the store"),
        (isinstance(error, exceptions.NotFoundError | FileNotFoundError),
         "the bucket does not exist"),
    ]
    for holds, words in said:
        if holds:
            return words
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return printable(_QUERY.sub("?…", first)[:160])  # a signed URL's query is a secret


def http_status(error: BaseException) -> int | None:
    """The HTTP status the store answered, as the library's message names it (a listing
    refused is a GenericError, not a PermissionDeniedError)."""
    found = _STATUS.search(str(error))
    return int(found.group(1)) if found is not None else None
