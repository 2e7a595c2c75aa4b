"""The submit's JSON body, built as bytes (no httpx here: it is pure)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kontext_pipeline.providers._base import EditRequest

__all__ = ["IMAGE_FIELDS", "ChangedInputError", "request_body"]

IMAGE_FIELDS = ("input_image", "input_image_2", "input_image_3", "input_image_4")


class ChangedInputError(Exception):
    """Input image ``index`` read other bytes than the plan hashed (``expected``)."""

    def __init__(self, index: int, expected: str, actual: str) -> None:
        super().__init__(index, expected, actual)
        self.index, self.expected, self.actual = index, expected, actual


def request_body(request: EditRequest, extra: Mapping[str, str] | None = None) -> bytes:
    """The submit's JSON, built as bytes: each image is read, base64-encoded and joined in
    without passing through a ``str`` (a 4 MP photo would otherwise be copied 4 times).
    ``extra``: more fields (the webhook's)."""
    body: dict[str, Any] = {
        "prompt": request.prompt,
        "seed": request.seed,
        "output_format": request.output_format,
        "safety_tolerance": request.safety_tolerance,
        "prompt_upsampling": request.prompt_upsampling,
    }
    if request.aspect_ratio is not None:
        body["aspect_ratio"] = request.aspect_ratio
    body.update(extra or {})
    parts = [json.dumps(body).encode("utf-8")[:-1]]  # without the closing brace
    for index, (field, image) in enumerate(zip(IMAGE_FIELDS, request.images, strict=False)):
        data = image.read_bytes() if isinstance(image, Path) else image
        if index < len(request.image_sha256):  # the bytes sent are the bytes keyed
            actual = hashlib.sha256(data).hexdigest()
            if actual != request.image_sha256[index]:
                raise ChangedInputError(index, request.image_sha256[index], actual)
        parts += [f', "{field}": "'.encode(), base64.b64encode(data), b'"']
        del data
    parts.append(b"}")
    return b"".join(parts)
