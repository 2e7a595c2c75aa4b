"""The submit's JSON body, built as bytes (no httpx here: it is pure)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kontext_pipeline.providers._base import EditRequest, request_params
from kontext_pipeline.recipe._models import MODELS

__all__ = ["IMAGE_FIELDS", "ChangedInputError", "request_body"]

IMAGE_FIELDS = ("input_image", *(f"input_image_{n}" for n in range(2, 9)))
"""The references' fields, in recipe order (a model takes the first ``Model.references``)."""


class ChangedInputError(Exception):
    """Input image ``index`` read other bytes than the plan hashed (``expected``)."""

    def __init__(self, index: int, expected: str, actual: str) -> None:
        super().__init__(index, expected, actual)
        self.index, self.expected, self.actual = index, expected, actual


def request_body(request: EditRequest, extra: Mapping[str, str] | None = None) -> bytes:
    """The submit's JSON, built as bytes: the request fields the model takes, in its own form
    (from the models table: ``disable_pup`` for FLUX.2 [pro] and [max], no upsampling field for
    [klein], ``output_format`` always), then each image read, base64-encoded and joined in
    without passing through a ``str`` (a 4 MP photo would otherwise be copied 4 times).
    ``extra``: more fields (the webhook's). Raises ValueError for more images than the model
    takes (validation refuses such a recipe)."""
    model = MODELS[request.model]
    if len(request.images) > model.references:
        raise ValueError(f"{request.model} takes at most {model.references} input images, "
                         f"not {len(request.images)}")
    body: dict[str, Any] = {"prompt": request.prompt, "seed": request.seed,
                            **model.body_fields(request_params(request))}
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
