"""Request validation of the local server, answering like BFL's FastAPI service: 422 with
``{"detail": [{"type", "loc", "msg", "input"}]}``, every problem at once."""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, UnidentifiedImageError

from kontext_pipeline._support.images import INPUT_FORMATS

__all__ = [
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "MAX_PROMPT_CHARS",
    "MAX_SECRET_CHARS",
    "Submission",
    "validate_submission",
]

MAX_IMAGE_BYTES = 20_000_000
MAX_IMAGE_PIXELS = 20_000_000
MAX_PROMPT_CHARS = 10_000  # what a recipe may render (templating.MAX_PROMPT_CHARS), no less
MAX_SECRET_CHARS = 1024
_IMAGE_FIELDS = ("input_image", "input_image_2", "input_image_3", "input_image_4")
_RATIO = re.compile(r"^([1-9][0-9]*):([1-9][0-9]*)$")
_MAX_RATIO = 21 / 9
_WEBHOOK_MAX = 2083


@dataclass
class Submission:
    """A valid submit: the parameters that shape the image, and the decoded input images."""

    prompt: str
    seed: int | None
    aspect_ratio: str | None
    output_format: str
    safety_tolerance: int
    prompt_upsampling: bool
    images: list[bytes] = field(default_factory=list)
    input_pixels: int = 0
    webhook_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)


def _error(kind: str, field_name: str, msg: str, value: Any) -> dict[str, Any]:
    shown = value if isinstance(value, str | int | float | bool) or value is None else str(value)
    if isinstance(shown, str) and len(shown) > 80:
        shown = shown[:77] + "..."
    return {"type": kind, "loc": ["body", field_name], "msg": msg, "input": shown}


_NOT_AN_INPUT = f"not a {', '.join(INPUT_FORMATS[:-1])} or {INPUT_FORMATS[-1]} image"
"""Why an image of another format (or none) is refused."""


def _decode_image(value: Any, name: str,
                  errors: list[dict[str, Any]]) -> tuple[bytes, int] | None:
    if not isinstance(value, str):
        errors.append(_error("string_type", name, "Input should be a valid string", value))
        return None
    if value.startswith(("http://", "https://")):
        errors.append(_error("value_error", name, "Value error, image URLs cannot be fetched by "
                                                  "this offline server; send base64", value))
        return None
    payload = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        errors.append(_error("value_error", name, "Value error, invalid base64 image", value))
        return None
    if len(data) > MAX_IMAGE_BYTES:
        errors.append(_error("value_error", name, "Value error, image larger than 20 MB", ""))
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # only the formats Pillow decodes itself: an EPS would run Ghostscript
            with Image.open(io.BytesIO(data), formats=INPUT_FORMATS) as image:
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    raise ValueError("more than 20 megapixels")
                pixels = image.width * image.height
                image.verify()  # structure and checksums, without decoding every pixel
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        why = (_NOT_AN_INPUT if isinstance(exc, UnidentifiedImageError)  # names an address
               else str(exc))
        errors.append(_error("value_error", name, f"Value error, not a usable image: {why}", ""))
        return None
    return data, pixels


def _ratio_ok(value: str) -> bool:
    match = _RATIO.match(value)
    if not match:
        return False
    ratio = int(match[1]) / int(match[2])
    return 1 / _MAX_RATIO - 1e-9 <= ratio <= _MAX_RATIO + 1e-9


def validate_submission(body: Any) -> tuple[Submission | None, list[dict[str, Any]]]:
    """Check a submit's JSON body; returns the submission or the 422 error entries."""
    if not isinstance(body, dict):
        return None, [{"type": "model_attributes_type", "loc": ["body"],
                       "msg": "Input should be a valid dictionary or object", "input": None}]
    errors = _parameter_errors(body)
    images, pixels = [], 0
    for name in _IMAGE_FIELDS:
        if body.get(name) is not None:
            decoded = _decode_image(body[name], name, errors)
            if decoded is not None:
                images.append(decoded[0])
                pixels += decoded[1]
    if errors:
        return None, errors
    return Submission(
        prompt=str(body["prompt"]), seed=body.get("seed"), aspect_ratio=body.get("aspect_ratio"),
        output_format=body.get("output_format", "png"),
        safety_tolerance=body.get("safety_tolerance", 2),
        prompt_upsampling=body.get("prompt_upsampling", False), images=images,
        input_pixels=pixels, webhook_url=body.get("webhook_url"),
        webhook_secret=body.get("webhook_secret")), []


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parameter_errors(body: dict[str, Any]) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []
    prompt = body.get("prompt")
    if "prompt" not in body:
        errors.append(_error("missing", "prompt", "Field required", None))
    elif not isinstance(prompt, str):
        errors.append(_error("string_type", "prompt", "Input should be a valid string", prompt))
    elif len(prompt) > MAX_PROMPT_CHARS:
        errors.append(_error("string_too_long", "prompt",
                             f"String should have at most {MAX_PROMPT_CHARS} characters", prompt))
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        errors.append(_error("int_type", "seed", "Input should be a valid integer", seed))
    ratio = body.get("aspect_ratio")
    if ratio is not None and (not isinstance(ratio, str) or not _ratio_ok(ratio)):
        errors.append(_error("value_error", "aspect_ratio",
                             "Value error, aspect ratio must be between 21:9 and 9:21", ratio))
    fmt = body.get("output_format", "png")
    if fmt not in ("jpeg", "png"):
        errors.append(_error("enum", "output_format", "Input should be 'jpeg' or 'png'", fmt))
    tolerance = body.get("safety_tolerance", 2)
    if not _is_int(tolerance) or not 0 <= tolerance <= 6:
        errors.append(_error("less_than_equal", "safety_tolerance",
                             "Input should be an integer from 0 to 6", tolerance))
    upsampling = body.get("prompt_upsampling", False)
    if not isinstance(upsampling, bool):
        errors.append(_error("bool_type", "prompt_upsampling", "Input should be a valid boolean",
                             upsampling))
    webhook = body.get("webhook_url")
    if webhook is not None and (not isinstance(webhook, str)
                                or not 1 <= len(webhook) <= _WEBHOOK_MAX):
        errors.append(_error("string_too_long", "webhook_url",
                             "String should have 1 to 2083 characters", webhook))
    secret = body.get("webhook_secret")
    if secret is not None and (not isinstance(secret, str) or not secret.isascii()
                               or not secret.isprintable() or len(secret) > MAX_SECRET_CHARS):
        errors.append(_error("string_type", "webhook_secret",
                             f"Input should be a string of at most {MAX_SECRET_CHARS} printable "
                             "ASCII characters", "(hidden)"))
    return errors
