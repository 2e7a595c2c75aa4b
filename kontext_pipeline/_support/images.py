"""Input images: are they real, complete images within the API's limits?"""

from __future__ import annotations

import hashlib
import io
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "INPUT_FORMATS",
    "MAX_INPUT_BYTES",
    "MAX_INPUT_PIXELS",
    "MAX_RESULT_PIXELS",
    "RESULT_FORMATS",
    "ImageCheckError",
    "ImageInfo",
    "ImageRefusedError",
    "inspect_bytes",
    "inspect_image",
    "sha256_file",
]

MAX_INPUT_BYTES = 20_000_000
"""The API accepts input images up to 20 MB…"""

MAX_INPUT_PIXELS = 20_000_000
"""…and up to 20 megapixels."""

MAX_RESULT_PIXELS = MAX_INPUT_PIXELS
"""A result is the next step's input: it may be no larger (the API makes about 1 to 4 MP)."""

RESULT_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
"""The formats a step may ask for, by its ``output_format``, as Pillow names them."""

INPUT_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
"""The formats an input image may have: ones Pillow decodes itself. Nothing read is ever handed
to an outside program (Pillow's EPS support would run Ghostscript on it)."""

_NAMED = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "EPS", "JPEG2000", "PSD", "ICO", "AVIF")
"""Formats named when refused (recognised by their first bytes only, never opened)."""

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


class ImageRefusedError(ImageCheckError):
    """A whole image that is refused for what it is (its format, its size): reading it again
    cannot change that."""


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
            with Image.open(path, formats=INPUT_FORMATS) as image:
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
        with path.open("rb") as handle:
            kind = _kind(handle.read(16))
        if kind is None:
            raise ImageCheckError("is not an image file that can be decoded") from None
        raise ImageRefusedError(f"is {_a(kind)} file; an input image must be "
                                f"{_choice(INPUT_FORMATS)}") from None
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow's words for truncated or corrupt
        raise ImageCheckError(f"is a damaged or incomplete image ({exc})") from exc


def inspect_bytes(data: bytes, formats: tuple[str, ...] = tuple(RESULT_FORMATS.values()),
                  ) -> ImageInfo:
    """Check that ``data`` (a downloaded result, say) is one complete image in one of
    ``formats`` (Pillow's names), of at most :data:`MAX_RESULT_PIXELS`.

    Only the decoders of ``formats`` ever see the bytes, and the size is checked from the
    header before any pixel is decoded. A PNG's chunks are then read to the end with their
    checksums; a JPEG is decoded in full at a reduced scale (which still reads every byte of
    it); other formats are decoded in full.
    """
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=formats) as image:
                width, height = image.size
                if width * height > MAX_RESULT_PIXELS:
                    raise ImageRefusedError(
                        f"is {width}×{height} pixels ({width * height / 1e6:.1f} megapixels); "
                        f"at most {MAX_RESULT_PIXELS / 1e6:.0f} megapixels are accepted")
                info = ImageInfo(str(image.format), width, height, len(data))
                if image.format == "PNG":
                    image.verify()
                else:
                    if image.format == "JPEG":
                        image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
                    image.load()
                return info
    except Image.DecompressionBombError:
        raise ImageRefusedError(f"declares far too many pixels (at most "
                                f"{MAX_RESULT_PIXELS / 1e6:.0f} megapixels are accepted)") from None
    except UnidentifiedImageError:
        kind = _kind(data[:16])
        if kind is None:
            raise ImageCheckError("is not an image file that can be decoded") from None
        raise ImageRefusedError(f"is {_a(kind)} image; {_choice(formats)} was asked "
                                "for") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageCheckError(f"is a damaged or incomplete image ({exc})") from exc


def _kind(prefix: bytes) -> str | None:
    """The format ``prefix`` (a file's first 16 bytes) announces, by Pillow's checks of
    first bytes alone: nothing is opened or parsed."""
    from PIL import Image  # noqa: PLC0415

    Image.init()
    for name in _NAMED:
        accept = Image.OPEN.get(name, (None, None))[1]
        if accept is not None and accept(prefix):
            return name
    return None


def _a(kind: str) -> str:
    shown = {"WEBP": "WebP", "JPEG2000": "JPEG 2000"}.get(kind, kind)
    return f"{'an' if shown[0] in 'AEFHILMNORSX' else 'a'} {shown}"


def _choice(formats: tuple[str, ...]) -> str:
    shown = [{"WEBP": "WebP"}.get(name, name) for name in formats]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
