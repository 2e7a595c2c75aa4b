"""The pictures of the local BFL-compatible server: deterministic, and visibly the edit asked for.

Each result frames the input image (or, for text-to-image, a picture drawn from the seed) in a
border whose color comes from the prompt, tints it toward any color the prompt names, shows the
other reference images as thumbnails and writes the prompt, seed and model in a caption band.
A chain of steps therefore shows as frames within frames, one caption per step.
"""

from __future__ import annotations

import hashlib
import io
import math
import random
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont, ImageOps

from kontext_pipeline._support.images import INPUT_FORMATS
from kontext_pipeline.recipe._models import KONTEXT_SIZES
from kontext_pipeline.recipe._models import output_size as result_size

__all__ = ["OUTPUT_SIZES", "RenderSpec", "output_size", "render"]

OUTPUT_SIZES = KONTEXT_SIZES
"""About one megapixel, snapped to Kontext's grid of preferred sizes (width, height)."""

_COLORS = {
    "red": (210, 40, 45), "blue": (40, 90, 220), "green": (40, 160, 70), "teal": (20, 150, 150),
    "yellow": (240, 200, 30), "orange": (240, 130, 30), "purple": (130, 60, 180),
    "pink": (240, 120, 170), "black": (25, 25, 30), "white": (240, 240, 240),
    "gold": (220, 170, 50), "golden": (230, 160, 60), "silver": (180, 185, 195),
    "brown": (120, 80, 45), "gray": (128, 128, 128), "grey": (128, 128, 128),
}
_TINT = 0.6
_SMALLEST = 480  # pixels: the shorter side a picture is drawn at, at least


@dataclass(frozen=True)
class RenderSpec:
    """What a result depends on: the request's images, prompt, seed, model and parameters."""

    images: Sequence[bytes]
    prompt: str
    seed: int
    model: str
    aspect_ratio: str | None
    output_format: str
    watermark: str = "PREVIEW"
    size: tuple[int, int] | None = None  # FLUX.2's: exactly this (width, height)

    def digest(self) -> bytes:
        hasher = hashlib.sha256()
        sized = (str(self.size).encode(),) if self.size else ()  # Kontext's pictures unmoved
        for part in (*self.images, self.prompt.encode(), str(self.seed).encode(),
                     self.model.encode(), str(self.aspect_ratio).encode(), *sized):
            hasher.update(hashlib.sha256(part).digest())
        return hasher.digest()


def output_size(aspect_ratio: str | None, source: tuple[int, int] | None) -> tuple[int, int]:
    """A Kontext result's size: the grid size nearest the requested ratio, else the input's
    ratio, else square."""
    return result_size("flux-kontext-pro", aspect_ratio=aspect_ratio, source=source)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _drawn_base(size: tuple[int, int], rng: random.Random) -> Image.Image:
    """Text-to-image: a gradient and a few shapes, all from the seed."""
    top = tuple(rng.randrange(40, 220) for _ in range(3))
    bottom = tuple(rng.randrange(20, 200) for _ in range(3))
    gradient = Image.linear_gradient("L").resize(size)
    image = Image.composite(Image.new("RGB", size, bottom), Image.new("RGB", size, top), gradient)
    draw = ImageDraw.Draw(image)
    width, height = size
    for _ in range(6):
        x, y = rng.randrange(width), rng.randrange(height)
        r = rng.randrange(width // 16, width // 5)
        fill = tuple(rng.randrange(256) for _ in range(3))
        if rng.random() < 0.5:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        else:
            draw.rectangle([x - r, y - r // 2, x + r, y + r // 2], fill=fill)
    return image


def _named_color(prompt: str) -> tuple[int, int, int] | None:
    words = "".join(c if c.isalpha() else " " for c in prompt.lower()).split()
    for word in words:
        if word in _COLORS:
            return _COLORS[word]
    return None


def render(spec: RenderSpec) -> bytes:
    """The result image's bytes, in ``spec.output_format``; same spec, same bytes."""
    rng = random.Random(spec.digest())
    images = [Image.open(io.BytesIO(data), formats=INPUT_FORMATS) for data in spec.images]
    first = images[0].convert("RGB") if images else None
    wanted = spec.size or output_size(spec.aspect_ratio, first.size if first else None)
    # a small result is drawn larger and scaled down: its frame and caption need room
    grow = max(1.0, min(_SMALLEST / min(wanted), math.sqrt(4e6 / (wanted[0] * wanted[1]))))
    size = (round(wanted[0] * grow), round(wanted[1] * grow))
    width, height = size
    caption = max(56, height // 9)
    margin = max(16, width // 40)
    inner = (width - 2 * margin, height - 2 * margin - caption)
    named = _named_color(spec.prompt)
    frame = named or tuple(rng.randrange(60, 230) for _ in range(3))
    base = (ImageOps.pad(first, inner, method=Image.Resampling.BILINEAR, color=frame) if first
            else _drawn_base(inner, rng))
    if named:
        toned = ImageOps.colorize(ImageOps.grayscale(base), (0, 0, 0), named, (255, 255, 255))
        base = Image.blend(base, toned, _TINT)
    canvas = Image.new("RGB", size, frame)
    canvas.paste(base, (margin, margin))
    thumb_width = inner[0] // 5
    rows = max(1, (inner[1] - 8) // (thumb_width + 8))
    for index, extra in enumerate(images[1:]):  # up to 7 more references, in columns
        thumb = ImageOps.contain(extra.convert("RGB"), (thumb_width, thumb_width))
        x = width - margin - (index // rows + 1) * (thumb_width + 8)
        y = margin + 8 + index % rows * (thumb_width + 8)
        canvas.paste(ImageOps.expand(thumb, border=3, fill=(255, 255, 255)), (x, y))
    _caption(canvas, spec, top=height - margin - caption, height=caption, margin=margin)
    if size != wanted:
        canvas = canvas.resize(wanted, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if spec.output_format == "jpeg":
        canvas.save(out, "JPEG", quality=90)
    elif spec.output_format == "webp":
        canvas.save(out, "WEBP", quality=90, method=0)
    else:
        canvas.save(out, "PNG", compress_level=1)  # speed over size: a local stand-in
    return out.getvalue()


def _caption(canvas: Image.Image, spec: RenderSpec, *, top: int, height: int,
             margin: int) -> None:
    width = canvas.width
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([margin, top, width - margin, top + height], fill=(18, 18, 24))
    size = max(12, height // 4)
    font, small = _font(size), _font(max(10, size * 3 // 4))
    chars = max(20, int((width - 2 * margin) / (size * 0.55)))
    lines = textwrap.wrap(spec.prompt, chars, max_lines=2, placeholder=" …")
    for i, line in enumerate(lines):
        draw.text((margin + 10, top + 6 + i * (size + 4)), line, fill=(245, 245, 245), font=font)
    footer = f"{spec.watermark} · {spec.model} · seed {spec.seed}"
    draw.text((margin + 10, top + height - size), footer, fill=(250, 200, 60), font=small)
