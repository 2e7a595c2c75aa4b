"""Provenance in exported images: what is written, where, and that nothing else changes."""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, PngImagePlugin

from kontext_pipeline.outputs._export import EXPORT_STATE
from kontext_pipeline.outputs._provenance import (
    Found,
    Provenance,
    encode_provenance,
    insert_provenance,
    read_provenance,
)
from kontext_pipeline.store._cache import Cache
from tests.conftest import RunCli, WriteRecipe

PROMPT = "Paint the car “blue” & write 'Grüße' <here> \"now\" — 日本語 🚗"

RECIPE = """
    version: 1
    name: provenance
    seed: 5
    inputs: {photo: photo.png}
    steps:
      - id: recolor
        image: photo
        prompt: "Paint the car \\u201cblue\\u201d & write 'Grüße' <here> \\"now\\" — 日本語 🚗"
      - id: relight
        prompt: |
          Relight it "at dusk"
          keep the 'sign' & <text>
        output_format: jpeg
    outputs:
      painted: recolor
      poster: relight
"""

SAMPLE = Provenance(recipe="poster", variant="color=red", step="relight",
                    model="flux-kontext-max", seed=42, provider="preview", cache_key="ab" * 32,
                    prompt="Relight it \"at dusk\" & <keep> 'it'\r\nline two\ttab \x01 — 日本")


class Run:
    """One ``run --provider preview`` of a recipe into ``out`` with ``cache``."""

    def __init__(self, run_cli: RunCli, recipe: Path, cache: Path, out: Path) -> None:
        self.run_cli, self.recipe, self.cache, self.out = run_cli, recipe, cache, out

    def __call__(self) -> None:
        result = self.run_cli("run", str(self.recipe), "--provider", "preview", "--cache-dir",
                              str(self.cache), "--out", str(self.out))
        assert result.exit_code == 0, result.output

    def step(self, name: str) -> dict[str, Any]:
        manifest = json.loads((self.out / "manifest.json").read_text())
        (record,) = [s for s in manifest["steps"] if s["step"] == name]
        return dict(record)

    def generated(self, name: str) -> Path:
        """The cache object of a step: the image as the provider made it."""
        return Cache(self.cache).object_path(self.step(name)["output_sha256"])

    def key(self, name: str) -> str:
        digest = self.step(name)["output_sha256"]
        (key,) = [e.key for _, e in Cache(self.cache).entries()
                  if e is not None and e.object == digest]
        return key


@pytest.fixture
def run(run_cli: RunCli, write_recipe: WriteRecipe, tmp_path: Path) -> Run:
    made = Run(run_cli, write_recipe(RECIPE), tmp_path / "cache", tmp_path / "out")
    made()
    return made


def png(size: tuple[int, int] = (4, 3)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(out, "PNG")
    return out.getvalue()


def jpeg(**options: Any) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(out, "JPEG", **options)
    return out.getvalue()


# --- real runs ---------------------------------------------------------------------------------

def test_an_exported_png_carries_its_provenance_in_itxt_chunks(run: Run) -> None:
    exported = run.out / "painted.png"
    with Image.open(exported) as image:
        assert image.text == {
            "Software": "kontext-pipeline",
            "kontext:recipe": "provenance",
            "kontext:variant": "default",
            "kontext:step": "recolor",
            "kontext:model": "flux-kontext-pro",
            "kontext:seed": str(run.step("recolor")["seed"]),
            "kontext:provider": "preview",
            "kontext:cacheKey": run.key("recolor"),
            "kontext:prompt": PROMPT,
        }
        pixels = image.tobytes()
    with Image.open(run.generated("recolor")) as generated:
        assert generated.text == {}
        assert generated.tobytes() == pixels
    data, original = exported.read_bytes(), run.generated("recolor").read_bytes()
    assert data[:33] == original[:33]  # signature and IHDR first
    assert data[-len(original) + 33:] == original[33:]  # then the chunks, then all the rest
    assert [data[i + 4:i + 8] for i in _chunk_offsets(data)][:10] == [b"IHDR"] + [b"iTXt"] * 9


def test_an_exported_jpeg_carries_its_provenance_in_xmp(run: Run) -> None:
    exported = run.out / "poster.jpg"
    with Image.open(exported) as image:
        xmp = image.info["xmp"].decode()
        pixels = image.tobytes()
    with Image.open(run.generated("relight")) as generated:
        assert "xmp" not in generated.info
        assert generated.tobytes() == pixels
    seed, key = run.step("relight")["seed"], run.key("relight")
    assert xmp == (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '  <rdf:Description rdf:about=""\n'
        '    xmlns:xmp="http://ns.adobe.com/xap/1.0/"\n'
        '    xmlns:kontext="https://kontext-pipeline.dev/ns/provenance/1.0/">\n'
        "   <xmp:CreatorTool>kontext-pipeline</xmp:CreatorTool>\n"
        "   <kontext:recipe>provenance</kontext:recipe>\n"
        "   <kontext:variant>default</kontext:variant>\n"
        "   <kontext:step>relight</kontext:step>\n"
        "   <kontext:model>flux-kontext-pro</kontext:model>\n"
        f"   <kontext:seed>{seed}</kontext:seed>\n"
        "   <kontext:provider>preview</kontext:provider>\n"
        f"   <kontext:cacheKey>{key}</kontext:cacheKey>\n"
        "   <kontext:prompt>Relight it \"at dusk\"\nkeep the 'sign' &amp; &lt;text&gt;"
        "</kontext:prompt>\n"
        "  </rdf:Description>\n"
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="w"?>')
    data = exported.read_bytes()
    assert data[2:4] == b"\xff\xe0"  # JFIF stays first
    assert data[20:22] == b"\xff\xe1"  # the XMP segment right after it


def test_the_provenance_reads_back_and_removing_it_gives_the_generated_image(run: Run) -> None:
    for name, step, fmt, prompt in [
        ("painted.png", "recolor", "png", PROMPT),
        ("poster.jpg", "relight", "jpeg", "Relight it \"at dusk\"\nkeep the 'sign' & <text>"),
    ]:
        found = read_provenance((run.out / name).read_bytes())
        record = run.step(step)
        assert found == Found(fmt, Provenance(
            recipe="provenance", variant="default", step=step, model="flux-kontext-pro",
            seed=record["seed"], provider="preview", cache_key=run.key(step), prompt=prompt),
            output_sha256=record["output_sha256"])


def test_two_runs_export_the_same_bytes(run: Run, run_cli: RunCli, tmp_path: Path) -> None:
    again = Run(run_cli, run.recipe, tmp_path / "cache2", tmp_path / "out2")  # made anew
    again()
    for name in ("painted.png", "poster.jpg"):
        assert (again.out / name).read_bytes() == (run.out / name).read_bytes()


def test_an_unchanged_output_is_not_written_again_nor_its_image_read(run: Run) -> None:
    exported = run.out / "painted.png"
    written = exported.read_bytes()
    inode = exported.stat().st_ino
    damaged = run.generated("recolor")  # the same size, so still a cache hit; not a PNG
    damaged.write_bytes(b"x" * damaged.stat().st_size)
    run()
    assert exported.stat().st_ino == inode
    assert exported.read_bytes() == written


def test_a_damaged_cached_image_is_made_again_not_exported(run: Run, run_cli: RunCli) -> None:
    (run.out / "painted.png").unlink()
    damaged = run.generated("recolor")  # the same size: a lookup checks its bytes too
    damaged.write_bytes(b"x" * damaged.stat().st_size)
    result = run_cli("run", str(run.recipe), "--provider", "preview", "--cache-dir",
                     str(run.cache), "--out", str(run.out))
    assert result.exit_code == 0, result.output
    assert "is not a PNG image (by its first bytes); the step runs again" in result.stderr
    assert b"xxxx" not in (run.out / "painted.png").read_bytes()
    verify = run_cli("cache", "verify", "--cache-dir", str(run.cache))
    assert verify.exit_code == 0


def test_an_output_edited_by_hand_is_restored(run: Run) -> None:
    exported = run.out / "poster.jpg"
    written = exported.read_bytes()
    exported.write_bytes(b"edited by hand")
    run()
    assert exported.read_bytes() == written


def test_new_provenance_for_the_same_image_is_written(run: Run) -> None:
    """Renaming the recipe keeps every cache key (the name is not in them) but not the
    provenance, so the file is written again."""
    exported = run.out / "painted.png"
    inode = exported.stat().st_ino
    run.recipe.write_text(run.recipe.read_text().replace("name: provenance", "name: renamed"))
    run()
    assert exported.stat().st_ino != inode
    found = read_provenance(exported.read_bytes())
    assert found is not None
    assert found.provenance.recipe == "renamed"
    assert found.output_sha256 == run.step("recolor")["output_sha256"]


def test_an_output_exported_without_provenance_gets_it(run: Run) -> None:
    """What an earlier version exported (a plain copy, recorded by the object's hash) is written
    again with its provenance."""
    exported = run.out / "painted.png"
    exported.write_bytes(run.generated("recolor").read_bytes())
    stat = exported.stat()
    (run.out / EXPORT_STATE).write_text(json.dumps(
        {"painted.png": [run.step("recolor")["output_sha256"], stat.st_size, stat.st_mtime_ns]}))
    run()
    assert read_provenance(exported.read_bytes()) is not None


# --- the format --------------------------------------------------------------------------------

def test_png_chunks_are_itxt_right_after_ihdr_with_valid_crcs() -> None:
    image = png()
    data = insert_provenance(image, encode_provenance(SAMPLE, "png"))
    chunks = []
    for offset in _chunk_offsets(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        kind, body = data[offset + 4:offset + 8], data[offset + 8:offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length:offset + 12 + length])
        assert zlib.crc32(kind + body) == crc
        chunks.append((kind, body))
    assert chunks[0][0] == b"IHDR"
    assert [body for kind, body in chunks if kind == b"iTXt"] == [
        b"Software\0\0\0\0\0kontext-pipeline",
        b"kontext:recipe\0\0\0\0\0poster",
        b"kontext:variant\0\0\0\0\0color=red",
        b"kontext:step\0\0\0\0\0relight",
        b"kontext:model\0\0\0\0\0flux-kontext-max",
        b"kontext:seed\0\0\0\0\x0042",
        b"kontext:provider\0\0\0\0\0preview",
        b"kontext:cacheKey\0\0\0\0\0" + b"ab" * 32,
        b"kontext:prompt\0\0\0\0\0" + SAMPLE.prompt.encode(),
    ]
    assert [kind for kind, _ in chunks][-2:] == [b"IDAT", b"IEND"]
    assert read_provenance(data) == Found("png", SAMPLE, output_sha256=_sha256(image))


def test_a_jpeg_prompt_keeps_quotes_and_carriage_returns_but_not_control_characters() -> None:
    data = insert_provenance(jpeg(), encode_provenance(SAMPLE, "jpeg"))
    found = read_provenance(data)
    assert found is not None
    assert found.provenance.prompt == (
        "Relight it \"at dusk\" & <keep> 'it'\r\nline two\ttab \ufffd — 日本")  # no XML for \x01
    assert found.output_sha256 == _sha256(jpeg())


def test_the_xmp_segment_goes_after_jfif_and_exif() -> None:
    exif = Image.Exif()
    exif[0x010F] = "Maker"
    image = jpeg(exif=exif)
    data = insert_provenance(image, encode_provenance(SAMPLE, "jpeg"))
    markers = []
    position = 2
    while data[position + 1] != 0xDB:  # up to the first quantization table
        markers.append(data[position + 4:position + 8])
        position += 2 + struct.unpack(">H", data[position + 2:position + 4])[0]
    assert markers == [b"JFIF", b"Exif", b"http"]
    with Image.open(io.BytesIO(data)) as opened:
        assert opened.getexif()[0x010F] == "Maker"
        assert b"<kontext:step>relight</kontext:step>" in opened.info["xmp"]


def test_provenance_too_large_for_a_jpeg_segment_is_refused() -> None:
    huge = replace(SAMPLE, prompt="&" * 13_000)
    with pytest.raises(ValueError, match=r"^the provenance takes 65831 bytes of XMP, more than a "
                                         r"JPEG segment holds$"):
        encode_provenance(huge, "jpeg")
    fits = replace(SAMPLE, prompt="&" * 12_000)
    assert len(encode_provenance(fits, "jpeg")) == 60_864  # 2 marker bytes + at most 0xFFFF


@pytest.mark.parametrize(("data", "message"), [
    (b"GIF89a", "is not a PNG or JPEG image"),
    (b"\x89PNG\r\n\x1a\n\0\0\0\x0dIDAT", "is a PNG that does not start with its IHDR chunk"),
    (b"\xff\xd8\xff\xe0\x00\x10JF", "is truncated or damaged (a JPEG segment runs past the end)"),
])
def test_inserting_into_something_else_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        insert_provenance(data, b"")


def test_an_image_without_provenance_reads_as_none() -> None:
    assert read_provenance(png()) is None
    assert read_provenance(jpeg()) is None
    info = PngImagePlugin.PngInfo()
    info.add_itxt("Software", "another program")
    out = io.BytesIO()
    Image.new("RGB", (2, 2)).save(out, "PNG", pnginfo=info)
    assert read_provenance(out.getvalue()) is None


def test_an_image_saved_again_keeps_its_provenance_but_not_its_generated_hash() -> None:
    exported = insert_provenance(png(), encode_provenance(SAMPLE, "png"))
    with Image.open(io.BytesIO(exported)) as image:
        info = PngImagePlugin.PngInfo()
        for keyword, text in image.text.items():
            info.add_itxt(keyword, text, zip=True)  # compressed, this time
        out = io.BytesIO()
        image.save(out, "PNG", pnginfo=info)
    found = read_provenance(out.getvalue())
    assert found == Found("png", SAMPLE, None)
    assert found is not None
    assert found.describe().splitlines()[8] == "output sha256: unknown (saved again after export)"


def _damage(data: bytes, old: bytes, new: bytes) -> bytes:
    assert old in data
    return data.replace(old, new, 1)


@pytest.mark.parametrize(("damage", "message"), [
    (lambda d: _damage(d, b"flux-kontext-max", b"flux-kontext-mix"),
     "is damaged (a text chunk fails its CRC check)"),
    (lambda d: d[:-20], "is truncated or damaged (a PNG chunk runs past the end)"),
])
def test_damaged_pngs_are_reported(damage: Any, message: str) -> None:
    data = insert_provenance(png((64, 64)), encode_provenance(SAMPLE, "png"))
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        read_provenance(damage(data))


def test_incomplete_or_damaged_provenance_is_reported() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("kontext:recipe", "poster")
    info.add_itxt("kontext:seed", "forty-two")
    out = io.BytesIO()
    Image.new("RGB", (2, 2)).save(out, "PNG", pnginfo=info)
    with pytest.raises(ValueError, match=r"^has incomplete provenance: no kontext:variant, "
                                         r"kontext:step, kontext:model, kontext:provider, "
                                         r"kontext:cacheKey, kontext:prompt$"):
        read_provenance(out.getvalue())
    data = insert_provenance(png(), encode_provenance(SAMPLE, "png"))
    bad_seed = _rewrite_itxt(data, "kontext:seed", "-1")
    with pytest.raises(ValueError, match=r"^has damaged provenance: kontext:seed is '-1', "
                                         r"not a number$"):
        read_provenance(bad_seed)


def laughs(encoding: str) -> bytes:
    """An XMP packet shaped as the "billion laughs": ten entities of ten of the one before,
    declared in a DOCTYPE (``&lol9;`` would be a billion "lol"s), encoded as ``encoding``."""
    entities = "".join(f' <!ENTITY lol{n} "{f"&lol{n - 1};" * 10}">\n' for n in range(1, 10))
    declared = encoding.upper().removesuffix("-BE")  # the BOM, or its absence, says the order
    text = (f'<?xml version="1.0" encoding="{declared}"?>\n'
            f'<!DOCTYPE x:xmpmeta [\n <!ENTITY lol0 "lol">\n{entities}]>\n'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/">&lol9;</x:xmpmeta>')
    return text.encode(encoding)


def xmp_segment(packet: bytes) -> bytes:
    return b"\xff\xe1" + struct.pack(">H", 2 + 29 + len(packet)) + (
        b"http://ns.adobe.com/xap/1.0/\0" + packet)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-16-be"])
def test_xmp_with_a_doctype_is_refused_in_any_encoding(encoding: str) -> None:
    packet = laughs(encoding)
    if encoding != "utf-8":  # what a search for the bytes "<!DOCTYPE" does not find
        assert b"<!DOCTYPE" not in packet
        assert b"<!ENTITY" not in packet
    with pytest.raises(ValueError, match=r"^is damaged \(its XMP packet has a DOCTYPE, which "
                                         r"XMP never has\)$"):
        read_provenance(insert_provenance(jpeg(), xmp_segment(packet)))


def test_xmp_with_an_external_doctype_is_refused() -> None:
    packet = (b'<!DOCTYPE x SYSTEM "file:///etc/passwd">'
              b'<x:xmpmeta xmlns:x="adobe:ns:meta/"/>')
    with pytest.raises(ValueError, match=r"^is damaged \(its XMP packet has a DOCTYPE"):
        read_provenance(insert_provenance(jpeg(), xmp_segment(packet)))


def test_xmp_that_is_not_xml_is_reported() -> None:
    with pytest.raises(ValueError, match=r"^is damaged \(its XMP packet is not well-formed "
                                         r"XML: undefined entity: line 1, column 36\)$"):
        read_provenance(insert_provenance(jpeg(), xmp_segment(
            b'<x:xmpmeta xmlns:x="adobe:ns:meta/">&lol;</x:xmpmeta>')))


def test_xmp_properties_written_as_attributes_are_read() -> None:
    """How other tools (exiftool among them) may write the same properties."""
    attributes = " ".join(f'kontext:{name}="{value}"' for name, value in
                          replace(SAMPLE, prompt="Relight").fields())
    packet = (f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
              f'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
              f'xmlns:kontext="https://kontext-pipeline.dev/ns/provenance/1.0/" {attributes}/>'
              f"</rdf:RDF></x:xmpmeta>").encode()
    segment = b"\xff\xe1" + struct.pack(">H", 2 + 29 + len(packet)) + (
        b"http://ns.adobe.com/xap/1.0/\0" + packet)
    found = read_provenance(insert_provenance(jpeg(), segment))
    assert found is not None
    assert found.provenance == replace(SAMPLE, prompt="Relight")
    assert found.output_sha256 is None  # not the bytes this tool writes


def _chunk_offsets(data: bytes) -> list[int]:
    offsets, position = [], 8
    while position < len(data):
        offsets.append(position)
        position += 12 + struct.unpack(">I", data[position:position + 4])[0]
    return offsets


def _rewrite_itxt(data: bytes, keyword: str, text: str) -> bytes:
    for offset in _chunk_offsets(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        body = data[offset + 8:offset + 8 + length]
        if data[offset + 4:offset + 8] == b"iTXt" and body.startswith(keyword.encode() + b"\0"):
            new = keyword.encode() + b"\0\0\0\0\0" + text.encode()
            chunk = struct.pack(">I", len(new)) + b"iTXt" + new + struct.pack(
                ">I", zlib.crc32(b"iTXt" + new))
            return data[:offset] + chunk + data[offset + 12 + length:]
    raise AssertionError(keyword)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
