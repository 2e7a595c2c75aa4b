"""``report.html``: a run as one self-contained page, a filmstrip per variant.

Each variant reads left to right: its input images, then every step's result with the rendered
prompt, seed, model, cache hit or miss, duration and cost, then the exported outputs. A step that
failed or was skipped stands in place with its reason; an image that cannot be shown (gone from
the cache and from ``--out``, an input file changed since the run) is a placeholder that says
why. A run of several variants (a matrix) starts with a grid, variants by steps, to compare at a
glance. Every thumbnail links to its full-size image in ``--out``.

This module prepares plain data; ``templates/report.html.j2`` lays it out, autoescaped. The page
works offline and on a phone: styles are inline, pictures are small thumbnails in ``data:`` URIs
(each distinct image embedded once, as a CSS background), nothing is fetched from anywhere.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import jinja2

from kontext_pipeline._support.files import write_atomic
from kontext_pipeline.errors import OutputError
from kontext_pipeline.outputs._manifest import Manifest, StepResult
from kontext_pipeline.outputs._plan_views import cost, credits_text, dollars, paid
from kontext_pipeline.outputs._plan_views import number as credits_number
from kontext_pipeline.outputs._report_pictures import (
    Picture,
    input_key,
    load_pictures,
    plainly_relative,
    recipe_inputs,
    step_file,
)
from kontext_pipeline.outputs._thumbnails import Thumbnail
from kontext_pipeline.store._cache import Cache

__all__ = ["Background", "Page", "compile_template", "render_report", "write_report"]

TEMPLATE = "report.html.j2"

_DATA_URI = re.compile(r"data:image/(?:webp|jpeg);base64,"
                       r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_CSS_CLASS = re.compile(r"p[0-9]+")
_PLACEHOLDERS = {"failed": "failed", "skipped": "skipped", "missing": "not in the cache"}


@dataclass(frozen=True)
class Page:
    """A rendered report: its HTML, how many images it shows, each one it could not show (one
    line each, to warn about), and each it showed from an exported file because the cache
    lacked it."""

    html: str
    shown: int
    problems: tuple[str, ...]
    from_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class Background:
    """A thumbnail embedded once, as the background image of the CSS class ``css``.

    It is written inside ``<style>``, where HTML escaping means nothing, so it is checked
    instead: only a ``data:image/webp`` or ``data:image/jpeg`` base64 URI (no quote, no
    parenthesis, no space can be in one) and a class named ``p<number>`` are accepted."""

    css: str
    uri: str

    def __post_init__(self) -> None:
        if not _CSS_CLASS.fullmatch(self.css):
            raise ValueError(f"a thumbnail's class is p<number>, not {self.css[:40]!r}")
        if not _DATA_URI.fullmatch(self.uri):
            raise ValueError(f"not a base64 data: URI of a WebP or JPEG image: "
                             f"{self.uri[:40]!r}")


@dataclass(frozen=True)
class FileLink:
    """A path under ``--out`` to show (its parts, to break the line only after a ``/``), and
    the link to it when it is plainly relative."""

    parts: tuple[str, ...]
    href: str | None


@dataclass(frozen=True)
class PictureView:
    """One place an image is shown: its thumbnail's class and aspect, or the placeholder's
    text; ``href`` is its full-size image."""

    css: str | None
    width: int
    height: int
    label: str
    note: str
    href: str | None


@dataclass(frozen=True)
class InputFrame:
    name: str
    picture: PictureView
    file: FileLink


@dataclass(frozen=True)
class StepFrame:
    anchor: str
    position: int
    name: str
    status: str
    picture: PictureView
    reason: str | None
    prompt: str
    model: str
    seed: int
    cache_hit: bool
    cache: str
    time: str
    cost: str
    params: str
    sources: tuple[str, ...] | None  # None: the manifest did not record them
    output: FileLink | None


@dataclass(frozen=True)
class OutputFrame:
    name: str
    picture: PictureView
    file: FileLink
    step: str


@dataclass(frozen=True)
class VariantView:
    anchor: str
    name: str
    summary: str
    inputs: tuple[InputFrame, ...]
    steps: tuple[StepFrame, ...]
    outputs: tuple[OutputFrame, ...]


@dataclass(frozen=True)
class GridCell:
    anchor: str  # the step's frame in the filmstrips
    status: str
    picture: PictureView


@dataclass(frozen=True)
class GridRow:
    anchor: str
    name: str
    cells: tuple[GridCell | None, ...]  # None: the variant has no such step


@dataclass(frozen=True)
class Grid:
    columns: tuple[str, ...]
    rows: tuple[GridRow, ...]


@dataclass(frozen=True)
class Figure:
    """One of the totals: a number (or ``free``) and what it counts."""

    figure: str
    label: str
    bad: bool = False


@dataclass(frozen=True)
class Trouble:
    anchor: str
    variant: str
    step: str
    status: str


@dataclass(frozen=True)
class ReportView:
    """Everything the template shows, as plain data."""

    title: str
    pipeline: str
    meta: str
    totals: tuple[Figure, ...]
    troubles: tuple[Trouble, ...]
    grid: Grid | None
    variants: tuple[VariantView, ...]
    backgrounds: tuple[Background, ...]


def render_report(manifest: Manifest, *, cache: Cache, base: Path,
                  thumbnails: Mapping[str, Thumbnail] | None = None) -> Page:
    """The report of ``manifest``: step images come from ``cache`` (or, where it lacks them,
    from the files exported into ``base``); paths in the manifest are relative to ``base``
    (the manifest's folder). ``thumbnails``: those of cached images made already (by the
    sha256 of the image), as a run makes them while it waits on the API."""
    pictures = load_pictures(manifest, cache, base, thumbnails or {})
    view = _report_view(manifest, pictures)
    problems = tuple(p.problem for p in pictures.values() if p.problem)
    from_files = tuple(p.exported for p in pictures.values() if p.exported)
    return Page(_template().render(report=view), len(view.backgrounds), problems, from_files)


def write_report(path: Path, page: Page) -> None:
    """Write ``page`` to ``path`` atomically; :class:`OutputError` if it cannot be."""
    try:
        write_atomic(path, page.html.encode("utf-8"))
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}; check that the folder "
                          "is writable") from exc


def compile_template() -> None:
    """Compile the page's template now (tens of milliseconds), so that a run compiles it while
    it waits on the API rather than at its end."""
    _template()


@functools.cache
def _template() -> jinja2.Template:
    """The page's template, compiled once per process."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("kontext_pipeline.outputs", "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
        lstrip_blocks=True, keep_trailing_newline=True)
    return environment.get_template(TEMPLATE)


def _report_view(manifest: Manifest, pictures: dict[str, Picture]) -> ReportView:
    """The data of the page of ``manifest``, whose images are ``pictures`` (by key)."""
    classes = {key: f"p{number}" for number, key in
               enumerate(key for key, picture in pictures.items() if picture.thumbnail)}
    backgrounds = tuple(Background(classes[key], picture.thumbnail.data_uri)
                        for key, picture in pictures.items() if picture.thumbnail)
    shown = _Shown(pictures, classes)
    variants = tuple(_variant(manifest, variant, number, shown)
                     for number, variant in enumerate(manifest.variants, 1))
    return ReportView(
        title=f"{manifest.pipeline} · kontext-pipeline report", pipeline=manifest.pipeline,
        meta=(f"provider {manifest.provider} · {len(variants)} variant{_s(len(variants))} · "
              f"recipe sha256 {manifest.spec_sha256[:12]}"),
        totals=_totals(manifest),
        troubles=tuple(Trouble(f"s{index}", step.variant, step.step, step.status)
                       for index, step in enumerate(manifest.steps) if step.status != "done"),
        grid=_grid(manifest, shown) if len(variants) > 1 else None,
        variants=variants, backgrounds=backgrounds)


@dataclass(frozen=True)
class _Shown:
    """The pictures by key, and the CSS class of each that has a thumbnail."""

    pictures: dict[str, Picture]
    classes: dict[str, str]

    def view(self, key: str, label: str, href: str | None) -> PictureView:
        picture = self.pictures[key]
        if picture.thumbnail is None:
            return _placeholder(picture.problem or "cannot be shown")
        thumbnail = picture.thumbnail
        return PictureView(self.classes[key], thumbnail.width, thumbnail.height, label, "",
                           href)

    def of_step(self, step: StepResult, label: str) -> PictureView:
        """The step's image, linked to its full-size file; a placeholder saying why there
        is none."""
        if step.output_sha256 is None:
            return _placeholder(_PLACEHOLDERS.get(step.status, step.status))
        return self.view(step.output_sha256, label, _href(step_file(step)))


def _placeholder(note: str) -> PictureView:
    return PictureView(None, 3, 2, "", note, None)


def _href(path: str | None) -> str | None:
    """A link to a file under ``--out``, relative to the report; none to a path that is not
    plainly relative (absolute, ``..``, a scheme)."""
    return f"./{quote(path)}" if path is not None and plainly_relative(path) else None


def _file(path: str) -> FileLink:
    parts = path.split("/")
    return FileLink((*(f"{part}/" for part in parts[:-1]), parts[-1]), _href(path))


def _totals(manifest: Manifest) -> tuple[Figure, ...]:
    totals = manifest.totals
    made = sum(1 for step in manifest.steps if step.status == "done" and step.cache == "miss")
    seconds = sum(step.duration_s for step in manifest.steps)
    if paid(manifest.provider):
        price = Figure(credits_number(totals.credits),
                       f"credit{_s(totals.credits)} ({dollars(totals.credits)})")
    elif totals.credits:  # the preview provider
        price = Figure("free", f"would cost {credits_text(totals.credits)} on BFL")
    else:
        price = Figure("free", "")
    return (Figure(str(totals.steps), f"step{_s(totals.steps)}"),
            Figure(str(totals.cache_hits), "cached"), Figure(str(made), "made"), price,
            Figure(str(totals.failed), "failed", bad=totals.failed > 0),
            Figure(f"{seconds:.1f} s", "in steps"))


def _variant(manifest: Manifest, variant: str, number: int, shown: _Shown) -> VariantView:
    steps = [(index, step) for index, step in enumerate(manifest.steps)
             if step.variant == variant]
    inputs: dict[str, InputFrame] = {}
    for _, step in steps:
        for image, _digest in recipe_inputs(step):
            if image.name not in inputs:
                inputs[image.name] = InputFrame(
                    image.name, shown.view(input_key(image), f"input {image.name}",
                                           _href(image.path)),
                    _file(image.path or ""))
    outputs = []
    for _, step in steps:
        if step.output and step.output_sha256:
            name = step.output.rsplit("/", 1)[-1]
            outputs.append(OutputFrame(
                name, shown.view(step.output_sha256, f"output {name}", _href(step.output)),
                _file(step.output), step.step))
    done = sum(1 for _, step in steps if step.status == "done")
    credits = sum(step.credits for _, step in steps)
    return VariantView(
        f"v{number}", variant,
        f"{len(steps)} step{_s(len(steps))} · {done} done · {cost(credits, manifest.provider)}",
        tuple(inputs.values()),
        tuple(_step(index, position, step, manifest, shown)
              for position, (index, step) in enumerate(steps, 1)),
        tuple(outputs))


def _step(index: int, position: int, step: StepResult, manifest: Manifest,
          shown: _Shown) -> StepFrame:
    return StepFrame(
        anchor=f"s{index}", position=position, name=step.step, status=step.status,
        picture=shown.of_step(step, f"{step.step}: result"),
        reason=_reason(step, manifest.pipeline) if step.error and step.status != "done"
        else None,
        prompt=step.prompt, model=step.model, seed=step.seed, cache_hit=step.cache == "hit",
        cache=step.cache, time=f"{step.duration_s:.2f} s",
        cost=cost(step.credits, manifest.provider), params=_params(step),
        sources=None if step.images is None else tuple(image.name for image in step.images),
        output=_file(step.output) if step.output else None)


def _grid(manifest: Manifest, shown: _Shown) -> Grid:
    """Variants by steps: each variant's result of each step, side by side."""
    columns = tuple(dict.fromkeys(step.step for step in manifest.steps))
    rows = []
    for number, variant in enumerate(manifest.variants, 1):
        cells: dict[str, GridCell] = {}
        for index, step in enumerate(manifest.steps):
            if step.variant == variant and step.step not in cells:
                picture = shown.of_step(step, f"{variant} / {step.step}")
                if picture.css is None and step.output_sha256 is not None:
                    picture = _placeholder("not shown")  # why: in the frame the cell links to
                cells[step.step] = GridCell(f"s{index}", step.status, picture)
        rows.append(GridRow(f"v{number}", variant,
                            tuple(cells.get(column) for column in columns)))
    return Grid(columns, tuple(rows))


def _reason(step: StepResult, pipeline: str) -> str:
    """The step's error, without the ``pipeline/variant/step:`` label the page already shows."""
    return (step.error or "").removeprefix(f"{pipeline}/{step.variant}/{step.step}: ")


def _params(step: StepResult) -> str:
    params = step.params
    parts: list[str] = []
    if isinstance(params.get("aspect_ratio"), str):
        parts.append(str(params["aspect_ratio"]))
    if isinstance(params.get("width"), int) and isinstance(params.get("height"), int):
        parts.append(f"{params['width']}×{params['height']}")  # FLUX.2's requested size
    if isinstance(params.get("output_format"), str):
        parts.append(str(params["output_format"]))
    if isinstance(params.get("safety_tolerance"), int):
        parts.append(f"tolerance {params['safety_tolerance']}")
    if params.get("prompt_upsampling") is True:
        parts.append("upsampling")
    parts += [f"{name} {params[name]}" for name in ("steps", "guidance")
              if isinstance(params.get(name), int | float)]  # flux-2-flex's
    return " · ".join(parts)


def _s(count: float) -> str:
    return "" if count == 1 else "s"
