"""What the bundled server charges and the size a FLUX.2 result follows, by the server's own
table and arithmetic (the numbers of ``bfl-api.md`` §FLUX.2), not the recipe side's models
table: the plan's estimates are tested against what this charges, so the two must not share
the code that could make both wrong the same way.

Prices count megapixels of 1,000,000 pixels and are echoed unrounded, as BFL echoes a
fractional ``cost``; the size limit counts megapixels of 2^20 pixels (4 megapixels is
2048×2048, as BFL's help says).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["charge", "followed_size"]

_PRICE_PIXELS = 1_000_000
_SIZE_PIXELS = 4 * 2**20  # the most pixels a followed FLUX.2 result has
_SQUARE = (1024, 1024)  # a FLUX.2 result with no size and no input image

# credits: (first megapixel of output, each further megapixel, each megapixel of input)
_PER_MEGAPIXEL: dict[str, tuple[float, float, float]] = {
    "flux-2-pro": (3, 1.5, 1.5),
    "flux-2-max": (7, 3, 3),
    "flux-2-flex": (5, 5, 5),
    "flux-2-klein-4b": (1.4, 0.1, 0.1),
    "flux-2-klein-9b": (1.5, 0.2, 0.2),
}
_PER_IMAGE: dict[str, int] = {"flux-kontext-pro": 4, "flux-kontext-max": 8}


def charge(model: str, output: tuple[int, int], inputs: Sequence[tuple[int, int]]) -> float:
    """The credits one Ready result of ``model`` costs: a Kontext model's flat price (an int),
    else the output's first megapixel, each further one and each megapixel of the input images
    ``inputs`` (their decoded sizes), unrounded (to a millionth of a credit, past float
    noise). Raises KeyError for a model the server does not price."""
    if model in _PER_IMAGE:
        return _PER_IMAGE[model]
    first, further, per_input = _PER_MEGAPIXEL[model]
    made = output[0] * output[1] / _PRICE_PIXELS
    taken = sum(w * h for w, h in inputs) / _PRICE_PIXELS
    return round(first + further * max(0.0, made - 1) + per_input * taken, 6)


def followed_size(first: tuple[int, int] | None) -> tuple[int, int]:
    """The size of a FLUX.2 result that gives no ``width`` and ``height``: the first input
    image's, shrunk (keeping its shape) to at most 4 megapixels and down to multiples of 16
    (at least 64); 1024×1024 without an input image."""
    if first is None:
        return _SQUARE
    width, height = first
    shrink = min(1.0, math.sqrt(_SIZE_PIXELS / (width * height)))
    return (max(64, math.floor(width * shrink) // 16 * 16),
            max(64, math.floor(height * shrink) // 16 * 16))
