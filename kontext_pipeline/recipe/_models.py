"""The models a recipe can name: one :class:`Model` entry each, and everything that differs
between models read from that entry (the schema's enum is tested against it; validation, the
cache key's fields, the request body, prices and concurrency limits use it). Adding a model is
adding one entry to :data:`MODELS`.

The facts are BFL's (``bfl-api.md``): endpoints, reference counts, fields, ranges and prices.

Megapixels come in two sizes here. The size limits (4 megapixels of output, 9 of input and
output together) count :data:`MEGAPIXEL` = 2^20 pixels, as BFL's own help does ("Maximum 4
megapixels (e.g., 2048 × 2048)"): 2048×2048 is exactly 4 and 1024×1024 exactly 1. The prices
count :data:`PRICE_MEGAPIXEL` = 1,000,000 pixels: BFL does not say which its price uses, and
the smaller megapixel never makes an estimate lower than the charge (1024×1024 is 1.05 of them).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "ACCOUNT_LIMIT",
    "DEFAULT_MODEL",
    "KONTEXT_SIZES",
    "MEGAPIXEL",
    "MODELS",
    "PRICE_MEGAPIXEL",
    "REQUEST_FIELDS",
    "Model",
    "Price",
    "Range",
    "Sizes",
    "estimate_credits",
    "megapixels",
    "model_key",
    "output_size",
    "price_megapixels",
    "resolve_model",
    "takers",
]

MEGAPIXEL = 1 << 20
"""Pixels in a megapixel of the size limits and of the sizes in messages (2048×2048 is 4)."""

PRICE_MEGAPIXEL = 1_000_000
"""Pixels in a megapixel of the prices (conservative: BFL does not say; 1024×1024 is 1.05)."""

ACCOUNT_LIMIT = 24
"""Active tasks a BFL account may have at once, all models together."""

REQUEST_FIELDS = ("aspect_ratio", "width", "height", "steps", "guidance", "output_format",
                  "safety_tolerance", "prompt_upsampling")
"""Every request field a recipe may set (in a step or in ``defaults``), whichever model takes it."""

_KONTEXT_FIELDS = ("aspect_ratio", "output_format", "safety_tolerance", "prompt_upsampling")
_FLUX2_FIELDS = ("width", "height", "output_format", "safety_tolerance", "prompt_upsampling")
_KLEIN_FIELDS = ("width", "height", "output_format", "safety_tolerance")

Upsampling = Literal["prompt_upsampling", "disable_pup"]


@dataclass(frozen=True)
class Range:
    """An inclusive range of a numeric field, and the API's default when the field is absent."""

    minimum: float
    maximum: float
    default: float


@dataclass(frozen=True)
class Sizes:
    """What ``width`` and ``height`` may be: at least ``minimum`` pixels, a multiple of
    ``multiple``, at most ``max_output_mp`` megapixels of output, and (where set) at most
    ``max_total_mp`` megapixels of input images and output together."""

    minimum: int = 64
    multiple: int = 16
    max_output_mp: float = 4.0
    max_total_mp: float | None = None


@dataclass(frozen=True)
class Price:
    """Credits (1 credit = $0.01) of one request. ``per_image``: ``first`` is the price of
    any image; else ``first`` is the output's first megapixel, ``further`` each further output
    megapixel and ``per_input`` each megapixel of input images, in fractions of a megapixel."""

    first: float
    further: float = 0.0
    per_input: float = 0.0
    per_image: bool = False

    def credits(self, output_mp: float, input_mps: Sequence[float] = ()) -> float:
        """The price of one request, unrounded."""
        if self.per_image:
            return self.first
        return (self.first + self.further * max(0.0, output_mp - 1.0)
                + self.per_input * sum(input_mps))


@dataclass(frozen=True)
class Model:
    """One model of BFL's API, as a recipe sees it.

    ``fields``: the request fields (of :data:`REQUEST_FIELDS`) it takes; any other is refused by
    validation and never sent. ``upsampling``: how ``prompt_upsampling`` reaches the API
    (``disable_pup`` is sent inverted), None where the model has no such control (a recipe's
    ``prompt_upsampling: false`` is then what it does anyway, and ``true`` is an error).
    ``api_output_format`` and ``api_upsampling``: what the API does when the field is absent
    (we always send both where the model takes them). ``safety``: the highest
    ``safety_tolerance``; ``safety_with_image``: the most the API applies with an input image.
    ``concurrency``: the most active tasks of this model an account may have.
    """

    name: str
    family: Literal["Kontext", "FLUX.2"]
    references: int
    fields: tuple[str, ...]
    upsampling: Upsampling | None
    safety: int
    price: Price
    api_output_format: str
    api_upsampling: bool | None
    sizes: Sizes | None = None
    steps: Range | None = None
    guidance: Range | None = None
    safety_with_image: int | None = None
    concurrency: int = ACCOUNT_LIMIT

    @property
    def endpoint(self) -> str:
        """The submit path: ``POST {base}/v1/<name>``."""
        return f"/v1/{self.name}"

    @property
    def refuses(self) -> tuple[str, ...]:
        """The request fields a recipe may set that this model does not take."""
        return tuple(f for f in REQUEST_FIELDS if f not in self.fields)

    def takes(self, field: str) -> bool:
        return field in self.fields

    def body_fields(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The submit body's request fields, as this model's API names them, from ``params``
        (request fields by their recipe names, as :meth:`Params.as_dict` gives them): the fields
        it takes, none it does not, a None left out (not sent: the model's own choice), and
        ``prompt_upsampling`` in the model's own form."""
        body: dict[str, Any] = {}
        for name in self.fields:
            value = params.get(name)
            if value is None:
                continue
            if name == "prompt_upsampling" and self.upsampling == "disable_pup":
                body["disable_pup"] = not value
            else:
                body[name] = value
        return body


def _flux2(name: str, *, references: int, price: Price, upsampling: Upsampling | None,
           fields: tuple[str, ...] = _FLUX2_FIELDS, max_total_mp: float | None = 9.0,
           api_upsampling: bool | None = True, steps: Range | None = None,
           guidance: Range | None = None) -> Model:
    return Model(name=name, family="FLUX.2", references=references, fields=fields,
                 upsampling=upsampling, safety=5, price=price, api_output_format="jpeg",
                 api_upsampling=api_upsampling, sizes=Sizes(max_total_mp=max_total_mp),
                 steps=steps, guidance=guidance)


MODELS: Mapping[str, Model] = {model.name: model for model in (
    Model(name="flux-kontext-pro", family="Kontext", references=4, fields=_KONTEXT_FIELDS,
          upsampling="prompt_upsampling", safety=6, safety_with_image=2,
          price=Price(4, per_image=True), api_output_format="png", api_upsampling=False),
    Model(name="flux-kontext-max", family="Kontext", references=4, fields=_KONTEXT_FIELDS,
          upsampling="prompt_upsampling", safety=6, safety_with_image=2,
          price=Price(8, per_image=True), api_output_format="png", api_upsampling=False,
          concurrency=6),
    _flux2("flux-2-pro", references=8, price=Price(3, 1.5, 1.5), upsampling="disable_pup"),
    _flux2("flux-2-max", references=8, price=Price(7, 3, 3), upsampling="disable_pup"),
    _flux2("flux-2-flex", references=8, price=Price(5, 5, 5), upsampling="prompt_upsampling",
           fields=(*_FLUX2_FIELDS, "steps", "guidance"), steps=Range(1, 50, 50),
           guidance=Range(1.5, 10, 5)),
    _flux2("flux-2-klein-4b", references=4, price=Price(1.4, 0.1, 0.1), upsampling=None,
           fields=_KLEIN_FIELDS, max_total_mp=None, api_upsampling=None),
    _flux2("flux-2-klein-9b", references=4, price=Price(1.5, 0.2, 0.2), upsampling=None,
           fields=_KLEIN_FIELDS, max_total_mp=None, api_upsampling=None),
)}
"""Every model a recipe can name, in the order the schema and the docs list them."""

DEFAULT_MODEL = "flux-kontext-pro"
"""The model of a recipe that names none."""


KONTEXT_SIZES: tuple[tuple[int, int], ...] = (
    (672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248), (880, 1184),
    (944, 1104), (1024, 1024), (1104, 944), (1184, 880), (1248, 832), (1328, 800), (1392, 752),
    (1456, 720), (1504, 688), (1568, 672),
)
"""A Kontext result's sizes: about one megapixel, snapped to a grid by aspect ratio."""

FOLLOWED_SIZE = (1024, 1024)
"""A FLUX.2 result's size when neither the request nor an input image gives one."""


def output_size(model: str, *, width: int | None = None, height: int | None = None,
                aspect_ratio: str | None = None,
                source: tuple[int, int] | None = None) -> tuple[int, int]:
    """The size (width, height) of ``model``'s result, as the API makes it (and the bundled
    server does; the plan's estimates use it). FLUX.2: ``width`` × ``height`` when both are
    given (not 0), else the first input image's size ``source`` (made at most the output limit
    and multiples of 16), else 1024×1024. Kontext: the grid size nearest the requested ratio,
    else the input's ratio, else square."""
    sizes = MODELS[model].sizes
    if sizes is None:
        if aspect_ratio:
            wide, _, high = aspect_ratio.partition(":")
            ratio = int(wide) / int(high)
        else:
            ratio = source[0] / source[1] if source else 1.0
        return min(KONTEXT_SIZES, key=lambda size: abs(math.log(size[0] / size[1] / ratio)))
    if width and height:
        return width, height
    if source is None:
        return FOLLOWED_SIZE
    scale = min(1.0, math.sqrt(sizes.max_output_mp * MEGAPIXEL / (source[0] * source[1])))
    step = sizes.multiple
    return (max(sizes.minimum, int(source[0] * scale) // step * step),
            max(sizes.minimum, int(source[1] * scale) // step * step))


def megapixels(width: int, height: int) -> float:
    """``width`` × ``height`` in megapixels of :data:`MEGAPIXEL` pixels, as the size limits
    count them."""
    return width * height / MEGAPIXEL


def price_megapixels(width: int, height: int) -> float:
    """``width`` × ``height`` in megapixels of :data:`PRICE_MEGAPIXEL` pixels, as the prices
    (:func:`estimate_credits`) count them."""
    return width * height / PRICE_MEGAPIXEL


def estimate_credits(model: str, output_mp: float, input_mps: Sequence[float] = ()) -> float:
    """What one request to ``model`` costs, in credits, for an output of ``output_mp``
    megapixels from input images of ``input_mps`` megapixels each (megapixels of
    :data:`PRICE_MEGAPIXEL` pixels) (a Kontext model's flat price
    whatever the sizes). Rounded up to a hundredth of a credit ($0.0001), so an estimate is
    never below the formula. Raises KeyError for a model not in :data:`MODELS`."""
    exact = MODELS[model].price.credits(output_mp, input_mps)
    return math.ceil(round(exact * 100, 6)) / 100


_TEMPLATE = re.compile(r"^\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}$")


def model_key(model: str) -> str | None:
    """The matrix key that a templated model (``"{{ model }}"``) takes its value from, or None
    for a model named as is."""
    match = _TEMPLATE.match(model)
    return match[1] if match else None


def resolve_model(model: str, values: Mapping[str, Any]) -> Any:
    """A step's model in one variant: ``model`` itself, or the value of the matrix key it names
    among ``values`` (None when the variant has no such value; validation reports that)."""
    key = model_key(model)
    return model if key is None else values.get(key)


def takers(field: str) -> str:
    """Which models take ``field``, in words: ``flux-2-flex``, ``the FLUX.2 models``,
    ``flux-kontext-pro, flux-kontext-max and flux-2-pro``."""
    names = [m.name for m in MODELS.values() if m.takes(field)]
    for family in ("Kontext", "FLUX.2"):
        if names == [m.name for m in MODELS.values() if m.family == family]:
            return f"the {family} models"
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
