"""``report.html``: a run as one self-contained page, a filmstrip per variant.

Each variant reads left to right: its input images, then every step's result with the rendered
prompt, seed, model, cache hit or miss, duration and cost, then the exported outputs. A step that
failed or was skipped stands in place with its reason; an image that cannot be shown (gone from
the cache, an input file changed since the run) is a placeholder that says why.

The page works offline and on a phone: styles are inline, pictures are small thumbnails in
``data:`` URIs (each distinct image embedded once), nothing is fetched from anywhere, and every
text from the recipe or the run is escaped.
"""

from __future__ import annotations

import hashlib
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from html import escape
from pathlib import Path
from urllib.parse import quote

from kontext_pipeline._support.files import write_atomic
from kontext_pipeline.errors import OutputError
from kontext_pipeline.outputs._manifests import Manifest, SourceImage, StepResult
from kontext_pipeline.outputs._report import cost, credits_text, dollars, paid
from kontext_pipeline.outputs._thumbnails import (
    THUMBNAILS,
    Thumbnail,
    ThumbnailError,
    ThumbnailStore,
    make_thumbnail,
)
from kontext_pipeline.store._cache import Cache

__all__ = ["Page", "render_report", "write_report"]


_MAX_IMAGE_BYTES = 64 * 1024 * 1024  # an image file larger than this is not read
_THREADS = 8

_STYLE = """
*{box-sizing:border-box}
body{margin:0;padding:16px;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:#1d1f24;background:#f4f5f7;overflow-wrap:anywhere}
h1{margin:0 0 4px;font-size:1.5em}
h2{margin:0 0 2px;font-size:1.15em}
h3{margin:8px 0 4px;font-size:1em;display:flex;gap:6px;align-items:baseline;flex-wrap:wrap}
.meta,.sum{margin:0;color:#5b616e}
.totals{display:flex;flex-wrap:wrap;gap:8px;margin:12px 0 0;padding:0;list-style:none}
.totals li{background:#fff;border:1px solid #d8dbe2;border-radius:8px;padding:6px 12px}
.totals b{font-size:1.2em;margin-right:4px}
.totals .bad{border-color:#c9302c;color:#a51d1a}
.failures{margin:10px 0 0;color:#a51d1a}
.failures a{color:inherit}
section{margin:24px 0 0}
.strip{display:flex;flex-wrap:wrap;align-items:flex-start;gap:12px 22px;margin:8px 0 0;
padding:0;list-style:none}
.frame{position:relative;flex:0 1 260px;min-width:0;background:#fff;border:1px solid #d8dbe2;
border-radius:10px;padding:10px}
.strip>.frame+.frame::before{content:"\\2192";position:absolute;left:-18px;top:64px;
color:#8a909c}
.frame.input,.frame.out{background:#eef1f6}
.frame.failed{border:2px solid #c9302c}
.frame.skipped,.frame.missing{border:2px dashed #9aa0ab}
.pic{display:block;width:100%;border-radius:6px;background:#e2e5ea center/contain no-repeat}
.none{display:flex;align-items:center;justify-content:center;padding:8px;text-align:center;
color:#5b616e;font-size:.9em;border:1px dashed #9aa0ab;background:#f7f7f9}
.idx{color:#8a909c}
.status{font-size:.8em;font-weight:600;border-radius:10px;padding:0 8px;background:#e2e5ea}
.status.done{background:#d9f0df;color:#1d6b32}
.status.failed{background:#f8d7d6;color:#a51d1a}
.status.hit{background:#dde8fa;color:#1f4d99}
.reason{margin:4px 0;color:#a51d1a}
.prompt{margin:4px 0;max-height:10em;overflow:auto;white-space:pre-wrap;font-size:.92em}
dl{display:grid;grid-template-columns:auto 1fr;gap:0 8px;margin:6px 0 0;font-size:.85em}
dt{color:#5b616e}dd{margin:0}
a{color:#1f4d99}
@media (max-width:560px){body{padding:10px}.strip{gap:22px}.frame{flex-basis:100%}
.strip>.frame+.frame::before{content:"\\2193";left:50%;top:-21px}}
"""


@dataclass(frozen=True)
class Page:
    """A rendered report: its HTML, how many images it shows, and each one it could not show
    (one line each, to warn about)."""

    html: str
    shown: int
    problems: tuple[str, ...]


@dataclass(frozen=True)
class _Picture:
    """An image to show: the CSS class that carries its thumbnail, or why it is missing."""

    css: str | None
    thumbnail: Thumbnail | None
    problem: str | None


def render_report(manifest: Manifest, *, cache: Cache, base: Path) -> Page:
    """The report of ``manifest``: step images come from ``cache``; input image paths are
    relative to ``base`` (the manifest's folder)."""
    pictures = _load_pictures(manifest, cache, base)
    body = [_header(manifest)]
    body.extend(_variant(manifest, variant, number, pictures)
                for number, variant in enumerate(manifest.variants, 1))
    styles = [_STYLE]
    styles.extend(f'.{p.css}{{background-image:url("{p.thumbnail.data_uri}")}}\n'
                  for p in pictures.values() if p.css and p.thumbnail)
    title = f"{manifest.pipeline} · kontext-pipeline report"
    html = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{escape(title)}</title>\n<style>{''.join(styles)}</style>\n</head>\n"
            f"<body>\n{''.join(body)}</body>\n</html>\n")
    problems = [p.problem for p in pictures.values() if p.problem]
    return Page(html, sum(1 for p in pictures.values() if p.css), tuple(problems))


def write_report(path: Path, page: Page) -> None:
    """Write ``page`` to ``path`` atomically; :class:`OutputError` if it cannot be."""
    try:
        write_atomic(path, page.html.encode("utf-8"))
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}; check that the folder "
                          "is writable") from exc


# -- pictures -------------------------------------------------------------------------------

def _input_key(image: SourceImage) -> str:
    return f"input:{image.path}"


@dataclass(frozen=True)
class _Source:
    """Where an image's bytes are, the sha256 they had in the run, and how to name it."""

    path: Path
    digest: str | None
    what: str
    is_input: bool


def _load_pictures(manifest: Manifest, cache: Cache, base: Path) -> dict[str, _Picture]:
    """Every distinct image the page shows, by key: a step output's sha256, or an input's
    ``input:<path>``. Thumbnails are made on several threads (Pillow decodes without the GIL)."""
    sources: dict[str, _Source] = {}
    for step in manifest.steps:
        for image, digest in _inputs(step):
            if image.path is not None and _input_key(image) not in sources:
                sources[_input_key(image)] = _Source(
                    base / image.path, digest, f"input image {image.path} ({image.name})", True)
        if step.output_sha256 is not None and step.output_sha256 not in sources:
            sources[step.output_sha256] = _Source(
                cache.object_path(step.output_sha256), step.output_sha256,
                f"the image of {step.variant} / {step.step}", False)
    store = ThumbnailStore(cache.root / THUMBNAILS)
    with ThreadPoolExecutor(max_workers=min(_THREADS, os.cpu_count() or 1)) as pool:
        made = list(pool.map(lambda source: _picture(source, store), sources.values()))
    return {key: _Picture(f"p{number}" if thumbnail else None, thumbnail, problem)
            for number, (key, (thumbnail, problem)) in enumerate(zip(sources, made,
                                                                     strict=True))}


def _inputs(step: StepResult) -> list[tuple[SourceImage, str | None]]:
    """The recipe inputs a step read, with the sha256 their bytes had in the run (if known:
    a skipped step read nothing)."""
    images = step.images or ()
    hashes: list[str | None] = [None] * len(images)
    if len(step.inputs_sha256) == len(images):
        hashes = list(step.inputs_sha256)
    return [(image, digest) for image, digest in zip(images, hashes, strict=True)
            if image.source == "input"]


class _UnshownError(Exception):
    """Why an image cannot be shown."""


def _picture(source: _Source, store: ThumbnailStore) -> tuple[Thumbnail | None, str | None]:
    """A thumbnail of ``source``, or why there is none. A cache object's thumbnail is made
    once and kept while the object is there (its bytes were checked when they were stored, and
    ``cache verify`` re-hashes them); an input file's is made each time, since the file may
    have changed."""
    if source.digest and not source.is_input and source.path.exists():
        kept = store.get(source.digest)
        if kept is not None:
            return kept, None
    try:
        thumbnail = make_thumbnail(_read(source))
    except _UnshownError as exc:
        return None, str(exc)
    except ThumbnailError as exc:
        return None, f"{source.what} {exc}: {source.path}"
    if source.digest and not source.is_input:
        store.put(source.digest, thumbnail)
    return thumbnail, None


def _read(source: _Source) -> bytes:
    path, what = source.path, source.what
    try:
        status = path.stat()
        if not stat.S_ISREG(status.st_mode):  # a pipe or a device could be read forever
            raise _UnshownError(f"{what} is not a file: {path}")
        if status.st_size > _MAX_IMAGE_BYTES:
            raise _UnshownError(f"{what} is too large to show: {path}")
        data = path.read_bytes()
    except FileNotFoundError:
        raise _UnshownError(f"{what} is missing: {path}" if source.is_input else
                            f"{what} is not in the cache (object {path.name[:12]})") from None
    except OSError as exc:
        raise _UnshownError(f"{what} cannot be read: {path}: {exc.strerror or exc}") from None
    if source.digest is not None and hashlib.sha256(data).hexdigest() != source.digest:
        raise _UnshownError(f"{what} has changed since the run: {path}" if source.is_input else
                            f"{what} is damaged in the cache (object {path.name[:12]})")
    return data


# -- HTML -----------------------------------------------------------------------------------

def _header(manifest: Manifest) -> str:
    totals = manifest.totals
    seconds = sum(step.duration_s for step in manifest.steps)
    variants = len(manifest.variants)
    made = sum(1 for step in manifest.steps if step.status == "done" and step.cache == "miss")
    if paid(manifest.provider):
        price = (f"<b>{totals.credits}</b>credit{_s(totals.credits)} "
                 f"({escape(dollars(totals.credits))})")
    elif totals.credits:  # the preview provider
        price = f"<b>free</b>would cost {escape(credits_text(totals.credits))} on BFL"
    else:
        price = "<b>free</b>"
    items = [
        ("", f"<b>{totals.steps}</b>step{_s(totals.steps)}"),
        ("", f"<b>{totals.cache_hits}</b>cached"),
        ("", f"<b>{made}</b>made"),
        ("", price),
        (" class=\"bad\"" if totals.failed else "", f"<b>{totals.failed}</b>failed"),
        ("", f"<b>{seconds:.1f} s</b>in steps"),
    ]
    lines = [
        "<header>\n",
        f"<h1>{escape(manifest.pipeline)}</h1>\n",
        f"<p class=\"meta\">provider {escape(manifest.provider)} · {variants} "
        f"variant{_s(variants)} · recipe sha256 {escape(manifest.spec_sha256[:12])}</p>\n",
        "<ul class=\"totals\">",
        *(f"<li{attrs}>{text}</li>" for attrs, text in items),
        "</ul>\n",
    ]
    troubled = [(number, step) for number, step in enumerate(manifest.steps)
                if step.status != "done"]
    if troubled:
        links = ", ".join(f"<a href=\"#s{number}\">{escape(step.variant)} / "
                          f"{escape(step.step)}</a> ({escape(step.status)})"
                          for number, step in troubled)
        lines.append(f"<p class=\"failures\">Not done: {links}</p>\n")
    lines.append("</header>\n")
    return "".join(lines)


def _variant(manifest: Manifest, variant: str, number: int,
             pictures: dict[str, _Picture]) -> str:
    steps = [(index, step) for index, step in enumerate(manifest.steps)
             if step.variant == variant]
    done = sum(1 for _, step in steps if step.status == "done")
    credits = sum(step.credits for _, step in steps)
    frames: list[str] = []
    seen: set[str] = set()
    for _, step in steps:
        for image, _digest in _inputs(step):
            if image.name not in seen:
                seen.add(image.name)
                frames.append(_input_frame(image, pictures[_input_key(image)]))
    frames.extend(_step_frame(index, position, step, manifest, pictures)
                  for position, (index, step) in enumerate(steps, 1))
    frames.extend(_output_frame(step, pictures[step.output_sha256])
                  for _, step in steps if step.output and step.output_sha256)
    summary = (f"{len(steps)} step{_s(len(steps))} · {done} done · "
               f"{escape(cost(credits, manifest.provider))}")
    return (f"<section id=\"v{number}\">\n<h2>{escape(variant)}</h2>\n"
            f"<p class=\"sum\">{summary}</p>\n<ol class=\"strip\">\n{''.join(frames)}</ol>\n"
            "</section>\n")


def _input_frame(image: SourceImage, picture: _Picture) -> str:
    return (f"<li class=\"frame input\">{_pic(picture, f'input {image.name}')}"
            f"<h3>input {escape(image.name)}</h3>"
            f"<dl><dt>file</dt><dd>{escape(image.path or '')}</dd></dl></li>\n")


def _step_frame(index: int, position: int, step: StepResult, manifest: Manifest,
                pictures: dict[str, _Picture]) -> str:
    if step.output_sha256 is not None:
        picture = _pic(pictures[step.output_sha256], f"{step.step}: result")
    else:
        picture = _placeholder({"failed": "failed", "skipped": "skipped",
                                "missing": "not in the cache"}.get(step.status, step.status))
    status = f"<span class=\"status {escape(step.status)}\">{escape(step.status)}</span>"
    reason = ""
    if step.error and step.status != "done":
        reason = f"<p class=\"reason\">{escape(_reason(step, manifest.pipeline))}</p>"
    cache = ("<span class=\"status hit\">cached</span>" if step.cache == "hit"
             else escape(step.cache))
    facts = [("model", escape(step.model)), ("seed", str(step.seed)), ("cache", cache),
             ("time", f"{step.duration_s:.2f} s"),
             ("cost", escape(cost(step.credits, manifest.provider)))]
    params = _params(step)
    if params:
        facts.append(("params", escape(params)))
    sources = [image.name for image in step.images or ()]
    if step.images is not None:
        facts.append(("from", escape(", ".join(sources)) if sources else "text-to-image"))
    if step.output:
        facts.append(("output", _link(step.output)))
    rows = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in facts)
    return (f"<li class=\"frame step {escape(step.status)}\" id=\"s{index}\">{picture}"
            f"<h3><span class=\"idx\">{position}.</span> {escape(step.step)} {status}</h3>"
            f"{reason}<p class=\"prompt\">{escape(step.prompt)}</p><dl>{rows}</dl></li>\n")


def _output_frame(step: StepResult, picture: _Picture) -> str:
    output = step.output or ""
    name = output.rsplit("/", 1)[-1]
    return (f"<li class=\"frame out\">{_pic(picture, f'output {name}')}"
            f"<h3>output {escape(name)}</h3>"
            f"<dl><dt>file</dt><dd>{_link(output)}</dd><dt>from</dt>"
            f"<dd>{escape(step.step)}</dd></dl></li>\n")


def _pic(picture: _Picture, label: str) -> str:
    if picture.css is None or picture.thumbnail is None:
        return _placeholder(picture.problem or "cannot be shown")
    thumbnail = picture.thumbnail
    return (f"<div class=\"pic {picture.css}\" role=\"img\" aria-label=\"{escape(label)}\" "
            f"style=\"aspect-ratio:{thumbnail.width}/{thumbnail.height}\"></div>")


def _placeholder(text: str) -> str:
    return f"<div class=\"pic none\" style=\"aspect-ratio:3/2\">{escape(text)}</div>"


def _link(output: str) -> str:
    """A link to an exported file, relative to the report; a path that is not plainly
    relative (absolute, ``..``, a scheme) is shown but not linked."""
    parts = output.split("/")
    if not output or output.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return escape(output)
    return f"<a href=\"./{escape(quote(output))}\">{escape(output)}</a>"


def _reason(step: StepResult, pipeline: str) -> str:
    """The step's error, without the ``pipeline/variant/step:`` label the page already shows."""
    return (step.error or "").removeprefix(f"{pipeline}/{step.variant}/{step.step}: ")


def _params(step: StepResult) -> str:
    params = step.params
    parts: list[str] = []
    if isinstance(params.get("aspect_ratio"), str):
        parts.append(str(params["aspect_ratio"]))
    if isinstance(params.get("output_format"), str):
        parts.append(str(params["output_format"]))
    if isinstance(params.get("safety_tolerance"), int):
        parts.append(f"tolerance {params['safety_tolerance']}")
    if params.get("prompt_upsampling") is True:
        parts.append("upsampling")
    return " · ".join(parts)


def _s(count: int) -> str:
    return "" if count == 1 else "s"
