"""Derived seeds and cache keys: the two things that make a recipe reproducible.

A cache key is the sha256 of a canonical JSON document that holds everything that changes the
image (provider, model, rendered prompt, seed, the sha256 of every input image's bytes as sent,
and every request parameter with its default made explicit) and nothing that does not (never the
API key, the base URL or webhook settings).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "KEY_SCHEMA",
    "MAX_SEED",
    "MIN_SEED",
    "cache_key",
    "canonical_json",
    "derive_seed",
    "request_document",
    "seed_of",
]

KEY_SCHEMA = "kontext-pipeline/cache-key/1"
"""Salt of every key document; bumping it invalidates every cache entry at once."""

MIN_SEED = 1
"""The API reads seed 0 as "pick one at random": a recipe's seeds are never 0."""

MAX_SEED = 2**32 - 1

def derive_seed(base_seed: int, step_id: str) -> int:
    """The seed of a step without its own: a function of the base seed and the step id only,
    so inserting or reordering steps reseeds no other step. Never 0 (see :func:`seed_of`)."""
    return seed_of(hashlib.sha256(f"kontext-pipeline/seed/1\0{base_seed}\0{step_id}".encode())
                   .digest())


def seed_of(digest: bytes) -> int:
    """A seed from 1 to :data:`MAX_SEED` out of a sha256 digest: its first four bytes, unless
    they are 0, which the BFL API reads as "random"; then the next four bytes, and so on (and
    the digest's own sha256 after eight zero words). A digest whose first word is not 0 gives
    the seed it always gave."""
    while True:
        for start in range(0, len(digest) - 3, 4):
            seed = int.from_bytes(digest[start:start + 4], "big")
            if seed:
                return seed
        digest = hashlib.sha256(digest).digest()


def canonical_json(document: Any) -> bytes:
    """Sorted keys, no insignificant whitespace, UTF-8: one byte string per document."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def request_document(
    *,
    provider: str,
    model: str,
    prompt: str,
    seed: int,
    input_sha256: Sequence[str],
    params: Mapping[str, Any],
) -> dict[str, Any]:
    """The document whose hash is the cache key of one request."""
    return {
        "schema": KEY_SCHEMA,
        "provider": provider,
        "model": model,
        "prompt": prompt,
        "seed": seed,
        "input_sha256": list(input_sha256),
        "params": dict(params),
    }


def cache_key(document: Mapping[str, Any]) -> str:
    """The hex sha256 of the canonical form of ``document``."""
    return hashlib.sha256(canonical_json(document)).hexdigest()
