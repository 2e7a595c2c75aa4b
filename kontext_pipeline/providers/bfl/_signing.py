"""How BFL signs the webhooks it sends, in either documented form: the receiver checks them,
the bundled server makes them."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

__all__ = ["SECRET_HEADER", "SIGNATURE_HEADER", "body_is_proven", "signature", "verify"]

SIGNATURE_HEADER = "x-bfl-signature"
SECRET_HEADER = "x-webhook-secret"  # noqa: S105  (a header name, not a secret)


def signature(secret: str, body: bytes) -> str:
    """The ``X-BFL-Signature`` value that ``secret`` gives ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, headers: Mapping[str, str]) -> str | None:
    """None if ``body`` is signed with ``secret`` (either form), else what is wrong with it."""
    signed = headers.get(SIGNATURE_HEADER)
    if signed is not None:
        given = signed.strip()
        expected = signature(secret, body)
        if not given.startswith("sha256="):
            expected = expected.removeprefix("sha256=")
        ok = hmac.compare_digest(given.encode("latin-1", "replace"), expected.encode())
        return None if ok else f"its {SIGNATURE_HEADER} does not match"
    raw = headers.get(SECRET_HEADER)
    if raw is not None:
        ok = hmac.compare_digest(raw.encode("latin-1", "replace"), secret.encode())
        return None if ok else f"its {SECRET_HEADER} does not match"
    return f"it is not signed (no {SIGNATURE_HEADER} or {SECRET_HEADER} header)"


def body_is_proven(headers: Mapping[str, str]) -> bool:
    """Whether a notification that :func:`verify` accepted proves its body: only the HMAC form
    does. The ``X-Webhook-Secret`` form proves that the sender knows the secret, not that the
    body is what the API sent (anyone on the way could have changed it), so it is only a hint."""
    return SIGNATURE_HEADER in headers
