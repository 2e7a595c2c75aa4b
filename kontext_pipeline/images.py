"""Input images: are they real, complete images within the API's limits?"""

from __future__ import annotations

import hashlib
import io
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MAX_INPUT_BYTES",
    "MAX_INPUT_PIXELS",
    "ImageCheckError",
    "ImageInfo",
    "inspect_bytes",
    "inspect_image",
    "sha256_file",
]

MAX_INPUT_BYTES = 20_000_000
"""The API accepts input images up to 20 MB…"""

MAX_INPUT_PIXELS = 20_000_000
"""…and up to 20 megapixels."""

_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ImageInfo:
    """What validation learnt about an image file."""

    format: str
    width: int
    height: int
    size_bytes: int


class ImageCheckError(Exception):
    """The file is not a usable input image; the message says why, without the path."""


def inspect_image(path: Path) -> ImageInfo:
    """Check that ``path`` is a complete, decodable image within the API's limits.

    The pixel count is checked from the header before anything is decoded, so a decompression
    bomb is refused without allocating its pixels.
    """
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415  (Pillow is slow to import)

    try:
        status = path.stat()
    except FileNotFoundError:
        raise ImageCheckError("does not exist") from None
    except OSError as exc:
        raise ImageCheckError(f"cannot be read ({exc.strerror})") from exc
    if stat.S_ISDIR(status.st_mode):
        raise ImageCheckError("is a directory, not an image file")
    if not stat.S_ISREG(status.st_mode):  # reading a pipe or a device could wait forever
        raise ImageCheckError("is not a regular file (a pipe, a device or a socket); an input "
                              "must be an image file")
    size = status.st_size
    if size > MAX_INPUT_BYTES:
        raise ImageCheckError(f"is {size / 1e6:.1f} MB; the API accepts at most "
                           f"{MAX_INPUT_BYTES / 1e6:.0f} MB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                pixels = width * height
                if pixels > MAX_INPUT_PIXELS:
                    raise ImageCheckError(
                        f"is {pixels / 1e6:.1f} megapixels ({width}×{height}); the API accepts "
                        f"at most {MAX_INPUT_PIXELS / 1e6:.0f} megapixels")
                image.load()
                return ImageInfo(str(image.format), width, height, size)
    except Image.DecompressionBombError:
        raise ImageCheckError(f"declares more than {MAX_INPUT_PIXELS / 1e6:.0f} megapixels; "
                           "the API accepts at most that") from None
    except UnidentifiedImageError:
        raise ImageCheckError("is not an image file that can be decoded") from None
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow's words for truncated or corrupt
        raise ImageCheckError(f"is a damaged or incomplete image ({exc})") from exc


def inspect_bytes(data: bytes) -> ImageInfo:
    """Check that ``data`` is one complete image (a downloaded result, say).

    A PNG's chunks are read to the end with their checksums; a JPEG is decoded in full at a
    reduced scale (which still reads every byte of it); other formats are decoded in full.
    """
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                info = ImageInfo(str(image.format), image.width, image.height, len(data))
                if image.format == "PNG":
                    image.verify()
                else:
                    if image.format == "JPEG":
                        image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
                    image.load()
                return info
    except Image.DecompressionBombError:
        raise ImageCheckError("declares far too many pixels") from None
    except UnidentifiedImageError:
        raise ImageCheckError("is not an image file that can be decoded") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageCheckError(f"is a damaged or incomplete image ({exc})") from exc


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
