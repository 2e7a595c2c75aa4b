"""Request validation of the local server, answering like BFL's FastAPI service: 422 with
``{"detail": [{"type", "loc", "msg", "input"}]}``, every problem at once. What each model
takes (fields, ranges, references) is the models table's: a field it does not take is refused
(``extra_forbidden``), as BFL's request schemas forbid extra fields."""

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
from kontext_pipeline.recipe._models import MODELS, Model, Sizes, megapixels
from kontext_pipeline.server._pricing import followed_size

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
_IMAGE_FIELDS = ("input_image", *(f"input_image_{n}" for n in range(2, 9)))
_COMMON_FIELDS = ("prompt", "seed", "webhook_url", "webhook_secret")
_FORMATS = ("jpeg", "png", "webp")
_WEBP_SIDE = 16383  # the format's own limit
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
    input_sizes: list[tuple[int, int]] = field(default_factory=list)
    width: int = 0  # 0: follow the first input (FLUX.2); Kontext has no size fields
    height: int = 0
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
                  errors: list[dict[str, Any]]) -> tuple[bytes, tuple[int, int]] | None:
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
                size = image.size
                image.verify()  # structure and checksums, without decoding every pixel
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        why = (_NOT_AN_INPUT if isinstance(exc, UnidentifiedImageError)  # names an address
               else str(exc))
        errors.append(_error("value_error", name, f"Value error, not a usable image: {why}", ""))
        return None
    return data, size


def _ratio_ok(value: str) -> bool:
    match = _RATIO.match(value)
    if not match:
        return False
    ratio = int(match[1]) / int(match[2])
    return 1 / _MAX_RATIO - 1e-9 <= ratio <= _MAX_RATIO + 1e-9


def validate_submission(body: Any, model: str = "flux-kontext-pro",
                        ) -> tuple[Submission | None, list[dict[str, Any]]]:
    """Check a submit's JSON body for ``model``; returns the submission or the 422 errors."""
    if not isinstance(body, dict):
        return None, [{"type": "model_attributes_type", "loc": ["body"],
                       "msg": "Input should be a valid dictionary or object", "input": None}]
    info = MODELS[model]
    errors = _parameter_errors(body, info)
    images: list[bytes] = []
    sizes: list[tuple[int, int]] = []
    for name in _IMAGE_FIELDS[:info.references]:
        if body.get(name) is not None:
            decoded = _decode_image(body[name], name, errors)
            if decoded is not None:
                images.append(decoded[0])
                sizes.append(decoded[1])
    width, height = body.get("width") or 0, body.get("height") or 0
    if not errors and info.sizes is not None:
        errors += _size_errors(info.sizes, width, height, sizes)
    if not errors and body.get("output_format") == "webp" and max(width, height) > _WEBP_SIDE:
        errors.append({"type": "value_error", "loc": ["body"], "input": None, "msg": (
            f"Value error, a webp image is at most {_WEBP_SIDE} pixels a side")})
    if errors:
        return None, errors
    upsampling = (not body.get("disable_pup", False) if info.upsampling == "disable_pup"
                  else body.get("prompt_upsampling", bool(info.api_upsampling)))
    return Submission(
        prompt=str(body["prompt"]), seed=body.get("seed"), aspect_ratio=body.get("aspect_ratio"),
        output_format=body.get("output_format", info.api_output_format),
        safety_tolerance=body.get("safety_tolerance", 2), prompt_upsampling=upsampling,
        images=images, input_pixels=sum(w * h for w, h in sizes), input_sizes=sizes,
        width=width, height=height, webhook_url=body.get("webhook_url"),
        webhook_secret=body.get("webhook_secret")), []


def _accepted_fields(info: Model) -> set[str]:
    """The body fields ``info``'s API takes, by their API names."""
    own = {"disable_pup" if name == "prompt_upsampling" and info.upsampling == "disable_pup"
           else name for name in info.fields}
    return {*_COMMON_FIELDS, *_IMAGE_FIELDS[:info.references], *own}


def _size_errors(limits: Sizes, width: int, height: int,
                 sizes: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """The output size's limits: megapixels of the output alone, and of inputs and output (an
    output without a size counted at the size it follows the first input at)."""
    made = (width, height) if width and height else followed_size(sizes[0] if sizes else None)
    output = megapixels(*made)
    if output > limits.max_output_mp:
        return [{"type": "value_error", "loc": ["body"], "input": None,
                 "msg": f"Value error, width × height must be at most "
                        f"{limits.max_output_mp:g} megapixels, not {output:.2f}"}]
    total = output + sum(megapixels(w, h) for w, h in sizes)
    if limits.max_total_mp is not None and total > limits.max_total_mp:
        return [{"type": "value_error", "loc": ["body"], "input": None,
                 "msg": f"Value error, input images and output must total at most "
                        f"{limits.max_total_mp:g} megapixels, not {total:.2f}"}]
    return []


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parameter_errors(body: dict[str, Any], info: Model) -> list[dict[str, Any]]:
    accepted = _accepted_fields(info)
    errors = [_error("extra_forbidden", name, "Extra inputs are not permitted", body[name])
              for name in body if name not in accepted]
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
    fmt = body.get("output_format", info.api_output_format)
    if fmt not in _FORMATS:
        errors.append(_error("enum", "output_format",
                             "Input should be 'jpeg', 'png' or 'webp'", fmt))
    tolerance = body.get("safety_tolerance", 2)
    if not _is_int(tolerance):
        errors.append(_error("int_type", "safety_tolerance", "Input should be a valid integer",
                             tolerance))
    elif not 0 <= tolerance <= info.safety:
        errors.append(_error("greater_than_equal" if tolerance < 0 else "less_than_equal",
                             "safety_tolerance",
                             f"Input should be an integer from 0 to {info.safety}", tolerance))
    for name in ("prompt_upsampling", "disable_pup"):
        flag = body.get(name, False)
        if name in accepted and not isinstance(flag, bool):
            errors.append(_error("bool_type", name, "Input should be a valid boolean", flag))
    errors += _model_errors(body, info)
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


def _model_errors(body: dict[str, Any], info: Model) -> list[dict[str, Any]]:
    """``width``, ``height``, ``steps`` and ``guidance``, where ``info`` takes them."""
    errors: list[dict[str, Any]] = []
    sizes = info.sizes
    for name in ("width", "height"):
        value = body.get(name)
        if sizes is None or value is None:
            continue
        if not _is_int(value):
            errors.append(_error("int_type", name, "Input should be a valid integer", value))
        elif value != 0 and value < sizes.minimum:
            errors.append(_error("greater_than_equal", name, f"Input should be 0 or greater "
                                 f"than or equal to {sizes.minimum}", value))
        elif value % sizes.multiple:
            errors.append(_error("multiple_of", name,
                                 f"Input should be a multiple of {sizes.multiple}", value))
    for name, bounds in (("steps", info.steps), ("guidance", info.guidance)):
        value = body.get(name)
        if bounds is None or value is None:
            continue
        kind = "integer" if name == "steps" else "number"
        if not (_is_int(value) or (kind == "number" and isinstance(value, float))):
            errors.append(_error(f"{'int' if name == 'steps' else 'float'}_type", name,
                                 f"Input should be a valid {kind}", value))
        elif not bounds.minimum <= value <= bounds.maximum:
            errors.append(_error("less_than_equal" if value > bounds.maximum
                                 else "greater_than_equal", name,
                                 f"Input should be from {bounds.minimum:g} to "
                                 f"{bounds.maximum:g}", value))
    return errors
