"""Input images are checked from their header first, then decoded in full."""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from kontext_pipeline._support.images import (
    MAX_INPUT_BYTES,
    ImageCheckError,
    ImageInfo,
    ImageRefusedError,
    inspect_bytes,
    inspect_image,
    sha256_file,
)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width``×``height`` and that holds no pixels at all."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def check(path: Path) -> str:
    with pytest.raises(ImageCheckError) as caught:
        inspect_image(path)
    return str(caught.value)


def test_a_good_image(tmp_path: Path) -> None:
    path = tmp_path / "ok.jpg"
    Image.new("RGB", (40, 30), (1, 2, 3)).save(path)
    assert inspect_image(path) == ImageInfo("JPEG", 40, 30, path.stat().st_size)


def test_more_than_20_mb_is_refused_without_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    with path.open("wb") as handle:  # sparse: costs no disk
        handle.truncate(MAX_INPUT_BYTES + 1)
    assert check(path) == "is 20.0 MB; the API accepts at most 20 MB"


def test_more_than_20_megapixels_is_refused_from_the_header(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    path.write_bytes(png_header(5000, 4001))
    assert check(path) == ("is 20.0 megapixels (5000×4001); the API accepts at most 20 "
                           "megapixels")


def test_a_decompression_bomb_is_refused_without_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header(100_000, 100_000))
    assert check(path) == "declares more than 20 megapixels; the API accepts at most that"


def test_a_truncated_image_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cut.png"
    Image.effect_noise((128, 128), 64).save(path)
    path.write_bytes(path.read_bytes()[:-400])
    assert check(path).startswith("is a damaged or incomplete image (")


def test_missing_directory_and_non_image(tmp_path: Path) -> None:
    assert check(tmp_path / "nope.png") == "does not exist"
    assert check(tmp_path) == "is a directory, not an image file"
    (tmp_path / "a.txt").write_text("hello")
    assert check(tmp_path / "a.txt") == "is not an image file that can be decoded"


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "bytes"
    data = bytes(range(256)) * 10_000
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_pipe_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    os.mkfifo(path)
    assert check(path) == ("is not a regular file (a pipe, a device or a socket); an input must "
                           "be an image file")


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 24\nshowpage\n%%EOF\n"


def test_an_eps_input_is_refused_without_being_opened(tmp_path: Path) -> None:
    """Pillow would hand an EPS to Ghostscript to decode it: it is named by its first bytes
    and refused, never opened."""
    path = tmp_path / "photo.png"
    path.write_bytes(EPS)
    assert check(path) == ("is an EPS file; an input image must be PNG, JPEG, WebP, GIF, BMP "
                           "or TIFF")


@pytest.mark.parametrize("kind", ["TIFF", "WEBP", "GIF", "BMP"])
def test_other_formats_pillow_decodes_itself_are_inputs(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "photo"
    Image.new("RGB", (40, 30), (1, 2, 3)).save(path, kind)
    assert inspect_image(path) == ImageInfo(kind, 40, 30, path.stat().st_size)


def test_a_result_is_checked_against_the_formats_asked_for() -> None:
    with pytest.raises(ImageRefusedError) as caught:
        inspect_bytes(EPS, ("PNG", "JPEG"))
    assert str(caught.value) == "is an EPS image; PNG or JPEG was asked for"
    with pytest.raises(ImageRefusedError) as caught:
        inspect_bytes(png_header(5000, 4001), ("PNG",))
    assert str(caught.value) == ("is 5000×4001 pixels (20.0 megapixels); at most 20 megapixels "
                                 "are accepted")
    with pytest.raises(ImageCheckError) as damaged:
        inspect_bytes(b"<html>not an image</html>", ("PNG",))
    assert str(damaged.value) == "is not an image file that can be decoded"
    assert not isinstance(damaged.value, ImageRefusedError)  # a damaged download is retried
