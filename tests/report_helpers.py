"""Helpers for the report tests: preview runs made once per module, a report parsed into
elements (``html.parser``, no regular expressions over markup), and its embedded thumbnails read
back."""

from __future__ import annotations

import base64
import io
import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
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

MATRIX = """
    version: 1
    name: matrix
    seed: 5
    matrix:
      light: [dawn, dusk]
      ink: [red, blue]
    inputs:
      photo: photo.png
    steps:
      - {id: tint, image: photo, prompt: "Tint it {{ ink }}"}
      - {id: glow, prompt: "Light it at {{ light }}"}
    outputs:
      card: glow
    """
"""Four variants (2 × 2) × two steps, every step done."""


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


_VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
                   "source", "track", "wbr"})


@dataclass
class Element:
    """An element of a parsed page: its tag, attributes and children (elements and text)."""

    tag: str
    attrs: dict[str, str]
    children: list[Element | str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return self.attrs.get("class", "").split()

    @property
    def text(self) -> str:
        """The text inside, entities decoded, as a reader sees it (without the markup)."""
        return "".join(child if isinstance(child, str) else child.text
                       for child in self.children)

    def elements(self) -> Iterator[Element]:
        """Every element inside, in document order."""
        for child in self.children:
            if isinstance(child, Element):
                yield child
                yield from child.elements()

    def all(self, tag: str | None = None, cls: str | None = None) -> list[Element]:
        """The elements inside with this tag and this class (either may be left out)."""
        return [e for e in self.elements()
                if (tag is None or e.tag == tag) and (cls is None or cls in e.classes)]

    def one(self, tag: str | None = None, cls: str | None = None) -> Element:
        """The only element inside with this tag and class."""
        found = self.all(tag, cls)
        assert len(found) == 1, (tag, cls, [(e.tag, e.attrs) for e in found])
        return found[0]

    def by_id(self, anchor: str) -> Element:
        (found,) = [e for e in self.elements() if e.attrs.get("id") == anchor]
        return found

    def facts(self) -> dict[str, str]:
        """A frame's facts: the text of each ``dt`` and of the ``dd`` after it."""
        facts: dict[str, str] = {}
        for dl in self.all("dl"):
            names = dl.all("dt")
            values = dl.all("dd")
            assert len(names) == len(values)
            facts.update((n.text, v.text) for n, v in zip(names, values, strict=True))
        return facts


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.open = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {name: value or "" for name, value in attrs})
        self.open[-1].children.append(element)
        if tag not in _VOID:
            self.open.append(element)

    def handle_endtag(self, tag: str) -> None:
        assert self.open[-1].tag == tag, (tag, [e.tag for e in self.open])  # well nested
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.open[-1].children.append(data)


def parse_html(html: str) -> Element:
    """The page as elements; fails on a tag closed out of order or left open."""
    builder = _Builder()
    builder.feed(html)
    builder.close()
    assert builder.open == [builder.root], [e.tag for e in builder.open]
    return builder.root
