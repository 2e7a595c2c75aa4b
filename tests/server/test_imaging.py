"""The server's pictures: on Kontext's size grid, deterministic, and visibly the edit."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageChops, ImageStat

from kontext_pipeline.server._imaging import OUTPUT_SIZES, RenderSpec, output_size, render
from tests.bfl_helpers import png


def spec(prompt: str, *images: bytes, **options: object) -> RenderSpec:
    return RenderSpec(images=list(images), prompt=prompt, seed=int(str(options.get("seed", 1))),
                      model="flux-kontext-pro",
                      aspect_ratio=options.get("aspect_ratio"),  # type: ignore[arg-type]
                      output_format=str(options.get("output_format", "png")))


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_sizes_are_about_one_megapixel() -> None:
    for width, height in OUTPUT_SIZES:
        assert 0.95e6 < width * height < 1.1e6
        assert width % 16 == 0
        assert height % 16 == 0


@pytest.mark.parametrize(("ratio", "source", "size"), [
    ("1:1", None, (1024, 1024)),
    ("16:9", None, (1392, 752)),
    ("9:16", None, (752, 1392)),
    ("21:9", None, (1568, 672)),
    (None, (640, 416), (1248, 832)),
    (None, None, (1024, 1024)),
])
def test_output_size(ratio: str | None, source: tuple[int, int] | None,
                     size: tuple[int, int]) -> None:
    assert output_size(ratio, source) == size


def test_same_request_same_bytes_and_any_change_shows() -> None:
    photo = png((200, 200, 200), (320, 240))
    base = render(spec("Make it blue", photo))
    assert render(spec("Make it blue", photo)) == base
    assert render(spec("Make it blue", photo, seed=2)) != base
    assert render(spec("Make it green", photo)) != base
    assert render(spec("Make it blue", png((10, 10, 10), (320, 240)))) != base


def test_a_named_color_tints_the_picture() -> None:
    photo = png((200, 200, 200), (320, 240))
    red, green, blue = ImageStat.Stat(decode(render(spec("Make the car blue", photo)))).mean
    assert blue > red + 40
    assert blue > green + 40


def test_formats_and_ratio() -> None:
    image = decode(render(spec("x", aspect_ratio="16:9", output_format="jpeg")))
    assert (image.format, image.size) == ("JPEG", (1392, 752))
    assert decode(render(spec("x"))).format == "PNG"


def share_of(image: Image.Image, color: object) -> float:
    """The share of pixels within a few levels of ``color`` in every channel."""
    assert isinstance(color, tuple)
    rgb = image.convert("RGB")
    difference = ImageChops.difference(rgb, Image.new("RGB", rgb.size, color))
    near = [band.point(lambda level: 255 if level <= 3 else 0) for band in difference.split()]
    everywhere = ImageChops.darker(ImageChops.darker(near[0], near[1]), near[2])
    return everywhere.histogram()[255] / (rgb.width * rgb.height)


def test_a_chain_keeps_earlier_steps_visible() -> None:
    photo = png((250, 250, 250), (320, 240))
    first = render(spec("Step one", photo))
    second = render(spec("Step two", first))
    direct = render(spec("Step two", photo))
    frame = decode(first).getpixel((2, 2))  # the first step's frame color
    assert share_of(decode(second), frame) > 0.03  # shows, framed again, inside the second
    assert share_of(decode(direct), frame) < 0.001
