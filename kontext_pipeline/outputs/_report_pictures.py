"""The pictures of ``report.html``: a thumbnail of every distinct image a run's report shows,
or why it cannot be shown.

A step's image comes from the cache; when the cache lacks it (``cache gc``, another
``--cache-dir``) or holds it damaged, from the file the run exported into ``--out`` (the step's
``image``, else its ``output``), if that file is still as the export wrote it. An input image
comes from its file, if it still has the bytes the run read.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from kontext_pipeline._support.files import (
    IrregularFileError,
    TooLargeError,
    read_regular,
    resolves_inside,
)
from kontext_pipeline.outputs._manifest import Manifest, SourceImage, StepResult
from kontext_pipeline.outputs._provenance import image_format, read_provenance
from kontext_pipeline.outputs._thumbnails import (
    THUMBNAILS,
    Thumbnail,
    ThumbnailError,
    ThumbnailStore,
    make_thumbnail,
)
from kontext_pipeline.store._cache import Cache

__all__ = ["Picture", "input_key", "load_pictures", "plainly_relative", "recipe_inputs",
           "step_file"]

_MAX_IMAGE_BYTES = 64 * 1024 * 1024  # an image file larger than this is not read
_THREADS = 8


@dataclass(frozen=True)
class Picture:
    """An image of the page: its thumbnail, or why there is none; ``exported`` names the file
    in ``--out`` it was made from when the cache lacked the image."""

    thumbnail: Thumbnail | None
    problem: str | None = None
    exported: str | None = None


def input_key(image: SourceImage) -> str:
    """The key of a recipe input's picture (a step's is its ``output_sha256``)."""
    return f"input:{image.path}"


def plainly_relative(path: str | None) -> bool:
    """Whether ``path`` (``/`` separators) names a file inside the folder it is relative to:
    not absolute, no ``..``, ``.`` or empty part (``//host``), so that no scheme or other
    place can be reached through it."""
    if not path or path.startswith("/") or "\\" in path:
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


def step_file(step: StepResult) -> str | None:
    """The step's full-size image in ``--out``, relative to the manifest's folder: its
    ``image``, else (a manifest written before steps recorded it) its ``output``."""
    return step.image or step.output


def recipe_inputs(step: StepResult) -> list[tuple[SourceImage, str | None]]:
    """The recipe inputs a step read, with the sha256 their bytes had in the run (if known:
    a skipped step read nothing)."""
    images = step.images or ()
    hashes: list[str | None] = [None] * len(images)
    if len(step.inputs_sha256) == len(images):
        hashes = list(step.inputs_sha256)
    return [(image, digest) for image, digest in zip(images, hashes, strict=True)
            if image.source == "input"]


@dataclass(frozen=True)
class _Exported:
    """A file the run exported a step's image to: relative to the manifest's folder, and the
    sha256 of the file as written when the manifest recorded it."""

    path: str
    sha256: str | None


@dataclass(frozen=True)
class _Source:
    """Where an image's bytes are, the sha256 they had in the run, and how to name it; a step's
    image may also be read from the files it was exported to."""

    path: Path
    digest: str | None
    what: str
    is_input: bool
    exported: tuple[_Exported, ...] = ()


def load_pictures(manifest: Manifest, cache: Cache, base: Path,
                  made: Mapping[str, Thumbnail] | None = None) -> dict[str, Picture]:
    """Every distinct image the page shows, by key (:func:`input_key`, or a step's
    ``output_sha256``). ``made``: the thumbnails of cached images made already (by sha256).
    The others are made on several threads (Pillow decodes without the GIL)."""
    sources: dict[str, _Source] = {}
    for step in manifest.steps:
        for image, digest in recipe_inputs(step):
            if image.path is not None and input_key(image) not in sources:
                sources[input_key(image)] = _Source(
                    base / image.path, digest, f"input image {image.path} ({image.name})", True)
        if step.output_sha256 is not None:
            source = sources.get(step.output_sha256) or _Source(
                cache.object_path(step.output_sha256), step.output_sha256,
                f"the image of {step.variant} / {step.step}", False)
            sources[step.output_sha256] = _with_exports(source, step)
    pictures = {key: Picture(thumbnail) for key, source in sources.items()
                if made and not source.is_input and source.digest is not None
                and (thumbnail := made.get(source.digest)) is not None
                and source.path.exists()}  # as a kept one: while its object is there
    rest = [key for key in sources if key not in pictures]
    if rest:
        store = ThumbnailStore(cache.root / THUMBNAILS)
        with ThreadPoolExecutor(max_workers=min(_THREADS, os.cpu_count() or 1,
                                                len(rest))) as pool:
            pictures.update(zip(rest, pool.map(lambda key: _picture(sources[key], store, base),
                                               rest), strict=True))
    return {key: pictures[key] for key in sources}


def _with_exports(source: _Source, step: StepResult) -> _Source:
    files = list(source.exported)
    for path in dict.fromkeys((step.image, step.output)):
        if path and plainly_relative(path) and all(f.path != path for f in files):
            files.append(_Exported(path, step.output_file_sha256 if path == step.output
                                   else None))
    return _Source(source.path, source.digest, source.what, source.is_input, tuple(files))


class _UnshownError(Exception):
    """Why an image cannot be shown."""


def _picture(source: _Source, store: ThumbnailStore, base: Path) -> Picture:
    """A thumbnail of ``source``, or why there is none. A cache object's thumbnail is made
    once and kept while the object is there (its bytes were checked when they were stored, and
    ``cache verify`` re-hashes them); an input file's or an exported file's is made each time,
    since the file may have changed."""
    if source.digest and not source.is_input and source.path.exists():
        kept = store.get(source.digest)
        if kept is not None:
            return Picture(kept)
    try:
        thumbnail = _thumbnail(source.what, source.path, _read(source))
    except _UnshownError as exc:
        if source.is_input or not source.exported:
            return Picture(None, str(exc))
        return _from_exports(source, base, str(exc))
    if source.digest and not source.is_input:
        store.put(source.digest, thumbnail)
    return Picture(thumbnail)


def _thumbnail(what: str, path: Path, data: bytes) -> Thumbnail:
    try:
        return make_thumbnail(data)
    except ThumbnailError as exc:
        raise _UnshownError(f"{what} {exc}: {path}") from None


def _from_exports(source: _Source, base: Path, unshown: str) -> Picture:
    """The picture of a step's image the cache cannot give (``unshown`` says why), from the
    first of its exported files still as the export wrote it."""
    reasons = []
    for exported in source.exported:
        try:
            data = _read_exported(base, exported, source.digest)
            return Picture(_thumbnail(f"its exported file {exported.path}",
                                      base / exported.path, data), exported=exported.path)
        except _UnshownError as exc:
            reasons.append(str(exc))
    return Picture(None, f"{unshown}, and {'; '.join(reasons)}")


def _read_exported(base: Path, exported: _Exported, generated: str | None) -> bytes:
    """The bytes of an exported file, if they are what the export wrote: the file's recorded
    sha256 (when the manifest has it), and the image without its provenance is the one the
    step generated (``generated``, the manifest's ``output_sha256``)."""
    what = f"its exported file {exported.path}"
    path = base / exported.path
    if not resolves_inside(path, base):
        raise _UnshownError(f"{what} is outside {base}")
    try:
        data = read_regular(path, _MAX_IMAGE_BYTES)
    except FileNotFoundError:
        raise _UnshownError(f"{what} is missing") from None
    except IrregularFileError:
        raise _UnshownError(f"{what} is not a file") from None
    except TooLargeError:
        raise _UnshownError(f"{what} is too large to show") from None
    except OSError as exc:
        raise _UnshownError(f"{what} cannot be read: {exc.strerror or exc}") from None
    if not ((exported.sha256 is None or hashlib.sha256(data).hexdigest() == exported.sha256)
            and _generated_sha256(data) == generated):
        raise _UnshownError(f"{what} has changed since the run")
    return data


def _generated_sha256(data: bytes) -> str | None:
    """The sha256 of the image an exported file was made of: the file without the provenance
    the export inserted (a format without provenance is written as generated); None if the
    file was saved again since, or its provenance is damaged."""
    if image_format(data) is None:
        return hashlib.sha256(data).hexdigest()
    try:
        found = read_provenance(data)
    except ValueError:
        return None
    return hashlib.sha256(data).hexdigest() if found is None else found.output_sha256


def _read(source: _Source) -> bytes:
    path, what = source.path, source.what
    try:
        status = path.stat()  # an input may be a link to the user's picture
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
