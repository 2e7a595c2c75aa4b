"""Scaffolding: a first recipe in a folder, ready to validate and to run offline.

``kontext-pipeline init`` writes three files: the recipe, with a comment on every field; the
recipe JSON Schema beside it, which the recipe's modeline names with a relative path, so that
editors complete and check fields without a network; and an example input picture. The picture
is drawn here rather than shipped, from shapes alone (no fonts, no metadata), so its bytes, and
with them the cache keys of the steps that read it, are the same on every run.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

from kontext_pipeline._support.files import write_atomic
from kontext_pipeline.errors import OutputError, UsageError
from kontext_pipeline.recipe._schema import schema_text

__all__ = [
    "IMAGE_FILE",
    "RECIPE_FILE",
    "SCHEMA_FILE",
    "ScaffoldFile",
    "Written",
    "example_image",
    "recipe_name",
    "recipe_text",
    "scaffold_files",
    "write_scaffold",
]

RECIPE_FILE = "recipe.yaml"
SCHEMA_FILE = "pipeline.schema.json"
IMAGE_FILE = "images/example.png"

_FALLBACK_NAME = "my-recipe"
_MAX_NAME = 64
_NOT_IN_SLUG = re.compile(r"[^a-z0-9._-]+")
# Windows reserves these names whatever the extension; validation refuses them as recipe names
_DEVICE_NAME = re.compile(r"(con|prn|aux|nul|com\d|lpt\d)(\..*)?")

_RECIPE = """\
# yaml-language-server: $schema=pipeline.schema.json
# A kontext-pipeline recipe: FLUX.1 Kontext and FLUX.2 edits written down as data. Try it:
#   kontext-pipeline validate recipe.yaml                # every mistake, with its line
#   kontext-pipeline run recipe.yaml --provider preview  # offline and free (clearly fake images)
#   kontext-pipeline plan recipe.yaml                    # what a real run would cost
#   kontext-pipeline run recipe.yaml                     # real edits (needs BFL_API_KEY)
# The modeline above lets editors with the YAML language server complete and check every field
# against pipeline.schema.json, the format's JSON Schema (`kontext-pipeline schema` prints it).

version: 1                          # the recipe format; always 1
@NAME_LINE@
description: Paint the front door, then make it a snowy evening.  # free text, for people
model: flux-kontext-pro             # every step's model: flux-kontext-pro or flux-kontext-max
#                                     (4 and 8 credits an image), or flux-2-pro, flux-2-max,
#                                     flux-2-flex, flux-2-klein-4b, flux-2-klein-9b (priced per
#                                     megapixel; docs/recipe-reference.md has the table); a
#                                     step may set its own, and "{{ model }}" takes it from the
#                                     matrix (compare models side by side)
seed: 42                            # base seed, 1 to 4294967295: a step without a seed of its
#                                     own derives one from this and its id
defaults:                           # request parameters for every step that does not set them
  output_format: png                # png (the default), jpeg or webp
  safety_tolerance: 2               # 0 strictest ... 6 (FLUX.2: 5); Kontext with an input
#                                     image applies <= 2
  # aspect_ratio: "4:3"             # Kontext: W:H from 21:9 to 9:21, quoted; sent only when set
  # width: 1024                     # FLUX.2: the output's size, multiples of 16 from 64, at
  # height: 768                     #   most 4 megapixels; unset: the first input image's size
  # steps: 50                       # flux-2-flex only: 1 to 50 steps (default 50)
  # guidance: 5                     # flux-2-flex only: 1.5 to 10 (default 5)
  # (a default applies to the steps whose model takes it)
  # prompt_upsampling: false        # true lets the API rewrite prompts (then not reproducible)
vars:                               # template variables; `--var door=green` overrides one
  door: red                         # the prompts below use it as {{ door }}
# matrix:                           # variants, GitHub Actions style: every step runs once per
#   door: [red, green, blue]        #   combination; a matrix value replaces the variable
#   exclude: [{door: blue}]         #   `exclude` drops combinations, `include` adds them
# env: [BRAND]                      # environment variables prompts may read ({{ env.BRAND }}),
#                                     besides KONTEXT_VAR_*; never the rest, never secrets
inputs:                             # named input images, relative to this file, inside its folder
  house: images/example.png         # written by `kontext-pipeline init`; use your own picture
steps:                              # the edits, in order; each is one request to its model
  - id: door                        # unique id, by which `image`, `outputs` and logs name it
    image: house                    # an input or an EARLIER step (a list: multi-reference, up
#                                     to 4 images, 8 for flux-2-pro, -max and -flex)
    prompt: Paint the front door {{ door }}, keep everything else unchanged  # a Jinja template
  - id: evening                     # no `image`: this step edits the previous step's output
    prompt: >-                      # `>-` folds the lines below into one line
      Turn the scene into a snowy winter evening with warm light in the windows,
      keep the house and its {{ door }} door exactly as they are
    seed: 7                         # this step's own seed, instead of the derived one
    # model: flux-kontext-max       # a step may also set aspect_ratio, output_format,
    #                                 safety_tolerance and prompt_upsampling (and width,
    #                                 height, steps, guidance where its model takes them)
outputs:                            # what to export into --out (default out/<name>): file -> step
  door: door                        # door.png, the first step's result
  evening: evening                  # evening.png (without `outputs`: only the last step)
"""


@dataclass(frozen=True)
class ScaffoldFile:
    """One file of the scaffold: its path relative to the folder (with ``/``) and its bytes."""

    path: str
    data: bytes


@dataclass(frozen=True)
class Written:
    """A file ``write_scaffold`` wrote, and whether it replaced one (``--force``)."""

    path: Path
    replaced: bool


def recipe_name(directory: Path) -> str:
    """A recipe name (a slug) made from the folder's name, or ``my-recipe`` if none can be."""
    slug = _NOT_IN_SLUG.sub("-", directory.resolve().name.lower())
    slug = slug.lstrip("._-")[:_MAX_NAME].rstrip("._-")
    if not slug or _DEVICE_NAME.fullmatch(slug):
        return _FALLBACK_NAME
    return slug


def recipe_text(name: str) -> str:
    """The scaffolded recipe, named ``name``, with a comment on every field."""
    return _RECIPE.replace("@NAME_LINE@", f"{'name: ' + name:<35} # slug (a-z, 0-9, - _ .); "
                                          "names the default --out")


def example_image() -> bytes:
    """The example input: a house with a door, a tree and the sun, as PNG (320x240, RGB)."""
    from PIL import Image, ImageDraw  # noqa: PLC0415  (Pillow is slow to import)

    image = Image.new("RGB", (320, 240), (150, 200, 235))
    draw = ImageDraw.Draw(image)
    draw.ellipse((250, 20, 290, 60), fill=(255, 225, 120))  # sun
    draw.rectangle((0, 180, 319, 239), fill=(110, 170, 90))  # lawn
    draw.rectangle((70, 110, 210, 190), fill=(235, 225, 205))  # wall
    draw.polygon([(60, 112), (140, 55), (220, 112)], fill=(150, 70, 60))  # roof
    draw.rectangle((125, 140, 155, 190), fill=(240, 240, 240))  # the door, white for now
    draw.ellipse((148, 163, 152, 167), fill=(60, 60, 60))  # door knob
    for left in (85, 170):  # windows
        draw.rectangle((left, 130, left + 25, 155), fill=(170, 215, 240), outline=(90, 90, 90))
    draw.rectangle((255, 130, 265, 190), fill=(110, 80, 50))  # trunk
    draw.ellipse((230, 85, 290, 145), fill=(60, 130, 60))  # crown
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def scaffold_files(name: str) -> tuple[ScaffoldFile, ...]:
    """The files of a scaffold whose recipe is named ``name``."""
    return (
        ScaffoldFile(RECIPE_FILE, recipe_text(name).encode()),
        ScaffoldFile(SCHEMA_FILE, schema_text().encode()),
        ScaffoldFile(IMAGE_FILE, example_image()),
    )


def write_scaffold(directory: Path, *, force: bool = False) -> list[Written]:
    """Write the scaffold into ``directory`` (made if missing), named after it.

    Raises :class:`UsageError` if any of its files already exists (nothing is written then)
    unless ``force``, and :class:`OutputError` if a file cannot be written.
    """
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"init: {directory} is not a folder; name a folder for the recipe")
    files = scaffold_files(recipe_name(directory))
    existing = {f.path for f in files if (directory / f.path).exists()}
    if existing and not force:
        names = [f.path for f in files if f.path in existing]
        listed = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]
        verb = "exist" if len(names) > 1 else "exists"
        where = "the current folder" if directory == Path() else str(directory)
        raise UsageError(f"init: {listed} already {verb} in {where}; nothing was written "
                         "(--force replaces them)")
    written: list[Written] = []
    for file in files:
        target = directory / file.path
        try:
            write_atomic(target, file.data)
        except OSError as exc:
            raise OutputError(f"init: cannot write {target}: {exc.strerror or exc}") from exc
        written.append(Written(target, file.path in existing))
    return written
