"""Helpers for the report tests: preview runs made once per module, and reading a report's
embedded thumbnails back."""

from __future__ import annotations

import base64
import io
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner
from PIL import Image

from kontext_pipeline.cli import cli

PHOTO_COLOR = (30, 120, 200)

STRIP = """
    version: 1
    name: strip
    seed: 3
    matrix:
      tone: [dawn, dusk]
    inputs:
      photo: photo.png
    steps:
      - {id: paint, image: photo, prompt: "Paint the scene at {{ tone }}"}
      - {id: sign, prompt: "Add a sign that says {{ tone | upper }}"}
      - {id: finish, prompt: "Frame it for {{ tone }}"}
    outputs:
      final: finish
    """
"""Two variants × three steps, every step done."""

HOSTILE = """
    version: 1
    name: hostile
    seed: 9
    matrix:
      look: [calm, '<b>bold</b> & "loud"']
    inputs:
      photo: photo.png
    steps:
      - {id: one, image: photo, prompt: "Make it {{ look }}"}
      - id: two
        prompt: >-
          {% if look == 'calm' %}Keep it{% else %}Break it [[error]]{% endif %} {{ look }}
      - {id: three, prompt: "Finish {{ look }} <script>alert(1)</script>"}
    outputs:
      final: three
    """
"""Two variants × three steps; the second variant's step two fails and skips step three."""


@dataclass(frozen=True)
class PreviewRun:
    """A finished ``run --provider preview``: where its recipe, cache and outputs are."""

    root: Path
    code: int
    stdout: str
    stderr: str

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def html(self) -> str:
        return (self.out / "report.html").read_text(encoding="utf-8")


def preview_run(root: Path, recipe: str) -> PreviewRun:
    """Write ``recipe`` (with ``photo.png``) into ``root`` and run it with the preview provider."""
    root.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), PHOTO_COLOR).save(root / "photo.png")
    path = root / "recipe.yaml"
    path.write_text(textwrap.dedent(recipe).lstrip(), encoding="utf-8")
    result = CliRunner().invoke(cli, ["run", str(path), "--provider", "preview", "--cache-dir",
                                      str(root / "cache"), "--out", str(root / "out")],
                                catch_exceptions=False)
    return PreviewRun(root, result.exit_code, result.stdout, result.stderr)


_BACKGROUND = re.compile(r'\.(p\d+)\{background-image:url\("data:(image/[a-z]+);base64,'
                         r'([A-Za-z0-9+/=]+)"\)\}')


def thumbnails(html: str) -> dict[str, tuple[str, bytes]]:
    """Each embedded thumbnail of a report: CSS class -> (MIME type, image bytes)."""
    return {css: (mime, base64.b64decode(data)) for css, mime, data in _BACKGROUND.findall(html)}


def open_thumbnail(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        converted: Image.Image = image.convert("RGB")
    return converted
