"""Thumbnails: small, the right shape, and a clear refusal for what is not an image."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from kontext_pipeline.outputs._thumbnails import (
    THUMBNAIL_SIDE,
    THUMBNAILS,
    Thumbnail,
    ThumbnailError,
    ThumbnailStore,
    make_thumbnail,
)
from tests.conftest import RunCli
from tests.report_helpers import STRIP, preview_run, thumbnails


def encoded(image: Image.Image, format_: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format_)
    return out.getvalue()


def opened(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        loaded: Image.Image = image
    return loaded


@pytest.mark.parametrize(("size", "shape"), [((1248, 832), (320, 213)),
                                             ((672, 1568), (137, 320)),
                                             ((100, 50), (100, 50))])
def test_a_thumbnail_keeps_the_shape_within_the_side(size: tuple[int, int],
                                                     shape: tuple[int, int]) -> None:
    thumbnail = make_thumbnail(encoded(Image.new("RGB", size, (200, 40, 40)), "JPEG"))
    assert (thumbnail.width, thumbnail.height) == shape
    assert max(shape) <= THUMBNAIL_SIDE
    assert thumbnail.mime == "image/webp"
    assert opened(thumbnail.data).size == shape
    assert thumbnail.data_uri.startswith("data:image/webp;base64,UklGR")  # RIFF


def test_transparency_is_kept() -> None:
    thumbnail = make_thumbnail(encoded(Image.new("RGBA", (64, 64), (0, 0, 0, 0)), "PNG"))
    assert opened(thumbnail.data).getpixel((5, 5))[3] == 0  # type: ignore[index]


@pytest.mark.parametrize(("data", "message"), [
    (b"not an image", "is not an image that can be decoded"),
    # Pillow would open it (and, where Ghostscript is installed, run it to show it)
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n%%EOF\n",
     "is not an image that can be decoded"),
])
def test_what_is_not_an_image(data: bytes, message: str) -> None:
    with pytest.raises(ThumbnailError) as raised:
        make_thumbnail(data)
    assert str(raised.value) == message


def test_a_truncated_image_is_refused() -> None:
    data = encoded(Image.effect_noise((200, 200), 50), "PNG")
    with pytest.raises(ThumbnailError) as raised:
        make_thumbnail(data[: len(data) // 2])
    assert str(raised.value).startswith("is a damaged or incomplete image (")


@pytest.mark.parametrize(("side", "message"), [
    (10_000, "is 10000×10000 pixels, too large to show"),
    (15_000, "declares far too many pixels to show"),  # Pillow's own limit, before ours
])
def test_an_image_declaring_too_many_pixels_is_not_decoded(side: int, message: str) -> None:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)  # only a header, no pixels
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
    with pytest.raises(ThumbnailError) as raised:
        make_thumbnail(data)
    assert str(raised.value) == message


def test_the_store_keeps_a_thumbnail_by_the_digest_of_its_image(tmp_path: Path) -> None:
    store = ThumbnailStore(tmp_path / "thumbnails")
    digest = "ab" + "0" * 62
    assert store.get(digest) is None
    thumbnail = make_thumbnail(encoded(Image.new("RGB", (640, 480), (20, 90, 200)), "PNG"))
    store.put(digest, thumbnail)
    assert store.path(digest) == tmp_path / "thumbnails" / "ab" / f"{digest}-{THUMBNAIL_SIDE}.json"
    assert store.get(digest) == thumbnail
    store.path(digest).write_text("{damaged")
    assert store.get(digest) is None  # made again, never a wrong picture


def test_a_store_that_cannot_be_written_only_costs_time(tmp_path: Path) -> None:
    (tmp_path / "thumbnails").write_text("a file where the folder should be")
    store = ThumbnailStore(tmp_path / "thumbnails")
    thumbnail = make_thumbnail(encoded(Image.new("RGB", (64, 48), (9, 9, 9)), "PNG"))
    store.put("cd" + "1" * 62, thumbnail)
    assert store.get("cd" + "1" * 62) is None


def test_a_kept_record_of_another_type_is_absent(tmp_path: Path) -> None:
    store = ThumbnailStore(tmp_path / "thumbnails")
    digest = "ef" + "2" * 62
    good = make_thumbnail(encoded(Image.new("RGB", (64, 48), (9, 9, 9)), "PNG"))
    store.put(digest, good)
    record = json.loads(store.path(digest).read_text())
    for mime in ('image/webp;base64,AAAA");}</style><script>alert(1)</script><style>',
                 "text/html", "image/svg+xml", "image/png", "IMAGE/WEBP", None, ["image/webp"]):
        store.path(digest).write_text(json.dumps({**record, "mime": mime}))
        assert store.get(digest) is None, mime
    store.path(digest).write_text(json.dumps({**record, "mime": "image/jpeg"}))  # WebP bytes
    assert store.get(digest) is None
    for width in (0, -3, "320", 1.5, True):
        store.path(digest).write_text(json.dumps({**record, "width": width}))
        assert store.get(digest) is None, width
    store.path(digest).write_text(json.dumps(record))
    assert store.get(digest) == good


def test_a_thumbnail_is_only_ever_webp_or_jpeg() -> None:
    data = make_thumbnail(encoded(Image.new("RGB", (64, 48), (9, 9, 9)), "PNG")).data
    with pytest.raises(ValueError, match=r"^a thumbnail is image/webp or image/jpeg, not "
                                         r"'text/html'$"):
        Thumbnail(data, "text/html", 64, 48)


def test_a_kept_record_that_is_a_link_or_huge_is_not_read(tmp_path: Path) -> None:
    store = ThumbnailStore(tmp_path / "thumbnails")
    good = make_thumbnail(encoded(Image.new("RGB", (64, 48), (9, 9, 9)), "PNG"))
    store.put("aa" + "3" * 62, good)
    link = store.path("aa" + "4" * 62)
    link.symlink_to(store.path("aa" + "3" * 62))
    assert store.get("aa" + "4" * 62) is None
    store.path("aa" + "3" * 62).write_text(" " * 1_000_001 + store.path("aa" + "3" * 62)
                                           .read_text())
    assert store.get("aa" + "3" * 62) is None


def test_a_crafted_mime_in_the_cache_never_reaches_the_report(run_cli: RunCli,
                                                              tmp_path: Path) -> None:
    run = preview_run(tmp_path / "run", STRIP)
    assert run.code == 0, run.stderr
    records = sorted((run.cache / "v1" / THUMBNAILS).glob("*/*.json"))
    assert records
    script = "<script>alert(document.domain)</script>"
    for record in records:
        kept = json.loads(record.read_text())
        record.write_text(json.dumps({**kept, "mime": f'image/webp;x=");}}</style>{script}'}))
    (run.out / "report.html").unlink()
    result = run_cli("report", str(run.out), "--cache-dir", str(run.cache))
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert "<script" not in run.html
    assert {mime for mime, _ in thumbnails(run.html).values()} == {"image/webp"}
    for record in records:  # made again, and kept right
        assert json.loads(record.read_text())["mime"] == "image/webp"
