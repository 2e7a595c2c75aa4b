"""Thumbnails: a small picture of an image, made to be embedded in a page as a ``data:`` URI.

A thumbnail is at most :data:`THUMBNAIL_SIDE` pixels on its longer side and a few kilobytes
(WebP, or JPEG where Pillow lacks WebP), so a report of hundreds of images stays light; the full
image is never embedded.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kontext_pipeline._support import jsonsafe
from kontext_pipeline._support.files import write_atomic
from kontext_pipeline._support.images import INPUT_FORMATS

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["MAX_SOURCE_PIXELS", "THUMBNAILS", "THUMBNAIL_SIDE", "THUMBNAIL_TYPES", "Thumbnail",
           "ThumbnailError", "ThumbnailStore", "make_thumbnail"]

THUMBNAIL_SIDE = 320
"""The longer side of a thumbnail, in pixels (sharp enough at 240 CSS pixels on a phone)."""

MAX_SOURCE_PIXELS = 50_000_000
"""Larger images are not decoded (the API makes about one megapixel, and takes at most 20)."""

_QUALITY = 60

THUMBNAILS = "thumbnails"
"""Where, in the cache's layout, the thumbnails of its objects are kept."""

THUMBNAIL_TYPES = {"image/webp": (b"RIFF", b"WEBP"), "image/jpeg": (b"\xff\xd8\xff", b"")}
"""The only types a thumbnail has, with the magic bytes its data starts with (at 0 and 8)."""

_MAX_RECORD_BYTES = 1_000_000
"""A kept thumbnail is a few kilobytes; a larger record is not read."""


class ThumbnailError(Exception):
    """The bytes are not an image a thumbnail can be made of; the message says why."""


@dataclass(frozen=True)
class Thumbnail:
    """A downscaled copy of an image, encoded."""

    data: bytes
    mime: str
    width: int
    height: int

    def __post_init__(self) -> None:
        """Only what goes safely into a page: WebP or JPEG data of that type, a real size
        (a record read back from the cache is input, and ``mime`` is written into the page)."""
        magic = THUMBNAIL_TYPES.get(self.mime)  # a TypeError if it is not even a string
        if magic is None:
            raise ValueError(f"a thumbnail is image/webp or image/jpeg, not {self.mime!r}")
        if not (self.data.startswith(magic[0]) and self.data[8:8 + len(magic[1])] == magic[1]):
            raise ValueError(f"the data of a thumbnail is not {self.mime}")
        for side in (self.width, self.height):
            if type(side) is not int or side < 1:
                raise ValueError(f"a thumbnail's side is a positive whole number, not {side!r}")

    @property
    def data_uri(self) -> str:
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"


def make_thumbnail(data: bytes, side: int = THUMBNAIL_SIDE) -> Thumbnail:
    """A thumbnail of the image ``data``, at most ``side`` pixels on its longer side."""
    from PIL import Image, UnidentifiedImageError, features  # noqa: PLC0415  (slow to import)

    webp = features.check("webp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # only the formats Pillow decodes itself (an EPS would run Ghostscript)
            with Image.open(io.BytesIO(data), formats=INPUT_FORMATS) as image:
                if image.width * image.height > MAX_SOURCE_PIXELS:
                    raise ThumbnailError(f"is {image.width}×{image.height} pixels, too large "
                                         "to show")
                image.draft("RGB", (side * 2, side * 2))  # JPEG: decode at a reduced scale
                mode = "RGBA" if _has_alpha(image) and webp else "RGB"
                # an image already in that mode is scaled as it is: converting it first would
                # copy every pixel, a third of the time of a thumbnail
                picture = image if image.mode == mode else image.convert(mode)
                # shrink by a whole factor first, then filter: half the time of filtering all
                picture.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=1.0)
                if picture is image:  # closing the image frees its pixels
                    picture = image.copy()
    except Image.DecompressionBombError:
        raise ThumbnailError("declares far too many pixels to show") from None
    except UnidentifiedImageError:
        raise ThumbnailError("is not an image that can be decoded") from None
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow's words for truncated or corrupt
        raise ThumbnailError(f"is a damaged or incomplete image ({exc})") from exc
    out = io.BytesIO()
    if webp:
        picture.save(out, "WEBP", quality=_QUALITY, method=2)  # 4 is slower, 5% smaller
    else:
        picture.save(out, "JPEG", quality=_QUALITY, optimize=True)
    return Thumbnail(out.getvalue(), "image/webp" if webp else "image/jpeg", picture.width,
                     picture.height)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info


class ThumbnailStore:
    """Thumbnails kept by the sha256 of the image they show (in the cache, beside its objects),
    so that a report of images already seen decodes none of them again."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, digest: str) -> Path:
        return self.directory / digest[:2] / f"{digest}-{THUMBNAIL_SIDE}.json"

    def get(self, digest: str) -> Thumbnail | None:
        """The stored thumbnail of ``digest``; None (it is made again) if there is none that can
        be read: not a regular file, too large, damaged, or not a WebP/JPEG thumbnail."""
        try:
            kept = jsonsafe.loads(_read_record(self.path(digest)))
            return Thumbnail(base64.b64decode(kept["data"], validate=True), kept["mime"],
                             kept["width"], kept["height"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def keep(self, digest: str, data: bytes) -> None:
        """Make and keep the thumbnail of ``data`` (the image that ``digest`` names) unless it
        is kept already; best effort: the report makes what is missing."""
        if not self.path(digest).exists():
            with contextlib.suppress(ThumbnailError):
                self.put(digest, make_thumbnail(data))

    def record(self, digest: str) -> bytes | None:
        """The kept thumbnail of ``digest`` as it is kept (to hand on with its image, see
        :meth:`put_record`), if it can be read."""
        thumbnail = self.get(digest)
        return None if thumbnail is None else _encoded(thumbnail)

    def put_record(self, digest: str, record: bytes) -> None:
        """Keep a thumbnail handed on as :meth:`record` gave it, if it is one (it is input:
        a WebP or JPEG thumbnail of a real size, else nothing is kept and the report makes
        it)."""
        try:
            kept = jsonsafe.loads(record)
            thumbnail = Thumbnail(base64.b64decode(kept["data"], validate=True), kept["mime"],
                                  kept["width"], kept["height"])
        except (ValueError, KeyError, TypeError):
            return
        if max(thumbnail.width, thumbnail.height) <= THUMBNAIL_SIDE:
            self.put(digest, thumbnail)

    def put(self, digest: str, thumbnail: Thumbnail) -> None:
        """Keep ``thumbnail`` (best effort: a store that cannot be written only costs time)."""
        with contextlib.suppress(OSError):
            write_atomic(self.path(digest), _encoded(thumbnail), inside=self.directory)


def _encoded(thumbnail: Thumbnail) -> bytes:
    """A thumbnail as it is kept: JSON, its data in base64."""
    return json.dumps({"mime": thumbnail.mime, "width": thumbnail.width,
                       "height": thumbnail.height,
                       "data": base64.b64encode(thumbnail.data).decode("ascii")}).encode()


def _read_record(path: Path) -> bytes:
    """The bytes of a kept record: a regular file (a symlink is not followed), bounded."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as record:
        if not stat.S_ISREG(os.fstat(record.fileno()).st_mode):
            raise ValueError(f"{path} is not a file")
        data = record.read(_MAX_RECORD_BYTES + 1)
    if len(data) > _MAX_RECORD_BYTES:
        raise ValueError(f"{path} is larger than a thumbnail")
    return data
