"""Provenance in exported images: which recipe, variant and step made a picture, and how.

The fields are written into the image's byte stream without touching its pixels, in a fixed
order and with no timestamp, so the same step always exports the same bytes:

- **PNG**: one uncompressed ``iTXt`` chunk (UTF-8) per field, right after ``IHDR``: the
  standard keyword ``Software`` (``kontext-pipeline``), then ``kontext:recipe``,
  ``kontext:variant``, ``kontext:step``, ``kontext:model``, ``kontext:seed``,
  ``kontext:provider``, ``kontext:cacheKey`` and ``kontext:prompt``.
- **JPEG**: one XMP packet in an ``APP1`` segment, after ``SOI`` and any ``APP0`` (JFIF) and
  Exif ``APP1`` segments: ``xmp:CreatorTool`` and the same fields as properties of the
  :data:`XMP_NAMESPACE` namespace (prefix ``kontext``).

The inserted bytes are the only difference from the image as generated: removing them gives
back the cache object exactly, whose sha256 is the manifest's ``output_sha256``.
"""

from __future__ import annotations

import hashlib
import re
import stat
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kontext_pipeline.errors import ProvenanceError

__all__ = [
    "SOFTWARE",
    "XMP_NAMESPACE",
    "Found",
    "Provenance",
    "encode_provenance",
    "image_format",
    "insert_provenance",
    "read_provenance",
    "read_provenance_file",
    "strip_provenance",
]

SOFTWARE = "kontext-pipeline"
"""The ``Software`` / ``xmp:CreatorTool`` value (no version: an upgrade changes no output)."""

XMP_NAMESPACE = "https://kontext-pipeline.dev/ns/provenance/1.0/"
"""The XMP namespace of the provenance properties."""

_PREFIX = "kontext:"
_FIELDS = ("recipe", "variant", "step", "model", "seed", "provider", "cacheKey", "prompt")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IHDR_END = len(_PNG_SIGNATURE) + 8 + 13 + 4  # length, type, 13 bytes of data, CRC
_PNG_TEXT = (b"tEXt", b"zTXt", b"iTXt")
_MAX_TEXT = 1_000_000  # a compressed text chunk is inflated to this much at most
_XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
_MAX_SEGMENT = 0xFFFF - 2  # a JPEG segment's data, after its two length bytes
_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")  # no XML 1.0 form


@dataclass(frozen=True)
class Provenance:
    """What made an exported image."""

    recipe: str
    variant: str
    step: str
    model: str
    seed: int
    provider: str
    cache_key: str
    prompt: str

    def fields(self) -> tuple[tuple[str, str], ...]:
        """(name, text) of each field, in the order they are written."""
        values = {"recipe": self.recipe, "variant": self.variant, "step": self.step,
                  "model": self.model, "seed": str(self.seed), "provider": self.provider,
                  "cacheKey": self.cache_key, "prompt": self.prompt}
        return tuple((name, values[name]) for name in _FIELDS)


@dataclass(frozen=True)
class Found:
    """The provenance read from an image. ``output_sha256``: the sha256 of the image without
    the bytes export inserted, which is the image as generated (the manifest's
    ``output_sha256``) unless the file was changed since; None when another program saved it
    again, rewriting those bytes."""

    format: str
    provenance: Provenance
    output_sha256: str | None

    def to_json(self) -> dict[str, Any]:
        p = self.provenance
        return {"format": self.format, "recipe": p.recipe, "variant": p.variant, "step": p.step,
                "model": p.model, "seed": p.seed, "provider": p.provider,
                "cache_key": p.cache_key, "prompt": p.prompt,
                "output_sha256": self.output_sha256}

    def describe(self) -> str:
        """Plain text, one field a line; a prompt's further lines are indented."""
        p = self.provenance
        rows = [("format", self.format), ("recipe", p.recipe), ("variant", p.variant),
                ("step", p.step), ("model", p.model), ("seed", str(p.seed)),
                ("provider", p.provider), ("cache key", p.cache_key),
                ("output sha256", self.output_sha256 or "unknown (saved again after export)"),
                ("prompt", p.prompt)]
        width = max(len(label) for label, _ in rows) + 2
        return "\n".join(f"{label + ':':<{width}}{value}".replace("\n", "\n" + " " * width)
                         for label, value in rows)


def image_format(data: bytes) -> str | None:
    """``png`` or ``jpeg`` from the signature, else None."""
    if data.startswith(_PNG_SIGNATURE):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    return None


def encode_provenance(provenance: Provenance, fmt: str) -> bytes:
    """The bytes :func:`insert_provenance` adds to an image of format ``fmt`` (``png`` or
    ``jpeg``): PNG chunks, or a JPEG segment. Raises ValueError for another format, or when
    the fields do not fit in a JPEG segment (64 KB)."""
    if fmt == "png":
        return b"".join(_itxt(keyword, text) for keyword, text in
                        [("Software", SOFTWARE),
                         *((_PREFIX + name, text) for name, text in provenance.fields())])
    if fmt == "jpeg":
        packet = _xmp(provenance)
        if len(_XMP_HEADER) + len(packet) > _MAX_SEGMENT:
            raise ValueError(f"the provenance takes {len(packet)} bytes of XMP, more than a "
                             "JPEG segment holds")
        return b"\xff\xe1" + struct.pack(">H", 2 + len(_XMP_HEADER) + len(packet)) + (
            _XMP_HEADER + packet)
    raise ValueError(f"no provenance for {fmt!r} images")


def insert_provenance(image: bytes, encoded: bytes) -> bytes:
    """``image`` with ``encoded`` (from :func:`encode_provenance`) inserted where it belongs;
    the pixels are not decoded. Raises ValueError if ``image`` is not a well-formed PNG or
    JPEG."""
    position = _insertion_point(image)
    return image[:position] + encoded + image[position:]


def _insertion_point(image: bytes) -> int:
    fmt = image_format(image)
    if fmt == "png":
        if image[8:16] != b"\x00\x00\x00\x0dIHDR" or len(image) < _IHDR_END:
            raise ValueError("is a PNG that does not start with its IHDR chunk")
        return _IHDR_END
    if fmt == "jpeg":
        position = 2
        for marker, start, end in _jpeg_segments(image):
            if marker != 0xE0 and not (marker == 0xE1 and image[start:].startswith(b"Exif\0")):
                break
            position = end
        return position
    raise ValueError("is not a PNG or JPEG image")


def read_provenance(data: bytes) -> Found | None:
    """The provenance of an image's bytes, None if it has none. Raises ValueError (with the
    reason) if ``data`` is not a PNG or JPEG, is damaged, or holds incomplete provenance."""
    fmt = image_format(data)
    if fmt is None:
        raise ValueError("is not a PNG or JPEG image")
    fields = _png_fields(data) if fmt == "png" else _jpeg_fields(data)
    if not fields:
        return None
    missing = [name for name in _FIELDS if name not in fields]
    if missing:
        raise ValueError(f"has incomplete provenance: no {', '.join(_PREFIX + m for m in missing)}")
    if not re.fullmatch(r"[0-9]{1,20}", fields["seed"]):
        raise ValueError(f"has damaged provenance: {_PREFIX}seed is {fields['seed']!r}, "
                         "not a number")
    provenance = Provenance(
        recipe=fields["recipe"], variant=fields["variant"], step=fields["step"],
        model=fields["model"], seed=int(fields["seed"]), provider=fields["provider"],
        cache_key=fields["cacheKey"], prompt=fields["prompt"])
    return Found(fmt, provenance, _generated_sha256(data, fmt, provenance))


def read_provenance_file(path: Path) -> Found:
    """:func:`read_provenance` of a file; raises :class:`ProvenanceError` (exit code 2) when it
    cannot be read, is not a PNG or JPEG, or carries no (or damaged) provenance."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # reading a pipe could wait forever
            raise ProvenanceError(f"{path} is not a regular file")
        data = path.read_bytes()
    except OSError as exc:
        raise ProvenanceError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        found = read_provenance(data)
    except ValueError as exc:
        raise ProvenanceError(f"{path} {exc}") from exc
    if found is None:
        raise ProvenanceError(f"{path} has no kontext-pipeline provenance: it was not exported "
                              "by kontext-pipeline, or was saved again without its metadata")
    return found


def strip_provenance(data: bytes) -> bytes | None:
    """``data`` without the provenance export inserted: the image as generated, if the file
    was not changed since. None for a file that is not a PNG or JPEG, is damaged, holds no
    provenance, or whose provenance is not as export wrote it (saved again elsewhere)."""
    try:
        found = read_provenance(data)
    except ValueError:
        return None
    return None if found is None else _without(data, found.format, found.provenance)


def _without(data: bytes, fmt: str, provenance: Provenance) -> bytes | None:
    try:
        encoded = encode_provenance(provenance, fmt)
    except ValueError:  # fields too large for a JPEG segment: export wrote no such file
        return None
    start = data.find(encoded)
    return None if start < 0 else data[:start] + data[start + len(encoded):]


def _generated_sha256(data: bytes, fmt: str, provenance: Provenance) -> str | None:
    """The sha256 of ``data`` without its provenance (None: saved again elsewhere)."""
    image = _without(data, fmt, provenance)
    return None if image is None else hashlib.sha256(image).hexdigest()


# --- PNG ---------------------------------------------------------------------------------------

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _itxt(keyword: str, text: str) -> bytes:
    # keyword, NUL, not compressed, method 0, no language tag, no translated keyword, the text
    return _png_chunk(b"iTXt", keyword.encode("latin-1") + b"\0\0\0\0\0" + text.encode())


def _png_fields(data: bytes) -> dict[str, str]:
    """The ``kontext:`` text chunks (the first of each keyword), without the prefix."""
    fields: dict[str, str] = {}
    position = len(_PNG_SIGNATURE)
    while True:
        if position + 12 > len(data):
            raise ValueError("is truncated or damaged (a PNG chunk runs past the end)")
        (length,) = struct.unpack(">I", data[position:position + 4])
        kind = data[position + 4:position + 8]
        body = data[position + 8:position + 8 + length]
        if position + 12 + length > len(data):
            raise ValueError("is truncated or damaged (a PNG chunk runs past the end)")
        if kind == b"IEND":
            return fields
        if kind in _PNG_TEXT:
            (crc,) = struct.unpack(">I", data[position + 8 + length:position + 12 + length])
            if zlib.crc32(kind + body) != crc:
                raise ValueError("is damaged (a text chunk fails its CRC check)")
            keyword, text = _png_text(kind, body)
            if keyword.startswith(_PREFIX):
                fields.setdefault(keyword[len(_PREFIX):], text)
        position += 12 + length


def _png_text(kind: bytes, body: bytes) -> tuple[str, str]:
    keyword, _, rest = body.partition(b"\0")
    name = keyword.decode("latin-1")
    if kind == b"tEXt":
        return name, rest.decode("latin-1")
    if kind == b"zTXt":
        return name, _inflate(rest[1:]).decode("latin-1")
    compressed = rest[:1] == b"\x01"
    _language, _, rest = rest[2:].partition(b"\0")
    _translated, _, text = rest.partition(b"\0")
    try:
        return name, (_inflate(text) if compressed else text).decode()
    except UnicodeDecodeError:
        raise ValueError(f"is damaged (the {name} chunk is not UTF-8)") from None


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(data, _MAX_TEXT)
    except zlib.error:
        raise ValueError("is damaged (a compressed text chunk does not inflate)") from None
    if inflater.unconsumed_tail:
        raise ValueError(f"holds a compressed text chunk larger than {_MAX_TEXT} bytes")
    return text


# --- JPEG --------------------------------------------------------------------------------------

def _jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, data start, end) of each segment before the image data (SOS)."""
    segments: list[tuple[int, int, int]] = []
    position = 2
    while position < len(data):
        if data[position] != 0xFF:
            raise ValueError("is truncated or damaged (a JPEG marker is missing)")
        marker = data[position + 1] if position + 1 < len(data) else 0xFF
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0xDA, 0xD9):  # start of scan, end of image: no more metadata
            return segments
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length
            position += 2
            continue
        if position + 4 > len(data):
            break
        (length,) = struct.unpack(">H", data[position + 2:position + 4])
        end = position + 2 + length
        if length < 2 or end > len(data):
            break
        segments.append((marker, position + 4, end))
        position = end
    raise ValueError("is truncated or damaged (a JPEG segment runs past the end)")


def _jpeg_fields(data: bytes) -> dict[str, str]:
    """The provenance properties of the first XMP packet that has them."""
    for marker, start, end in _jpeg_segments(data):
        if marker == 0xE1 and data[start:end].startswith(_XMP_HEADER):
            fields = _xmp_fields(data[start + len(_XMP_HEADER):end])
            if fields:
                return fields
    return {}


def _escape(text: str) -> str:
    text = _XML_INVALID.sub("\ufffd", text)
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("\r", "&#13;"))  # a parser reads a bare CR as LF


def _xmp(provenance: Provenance) -> bytes:
    properties = "".join(f"   <kontext:{name}>{_escape(text)}</kontext:{name}>\n"
                         for name, text in provenance.fields())
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        f' <rdf:RDF xmlns:rdf="{_RDF}">\n'
        '  <rdf:Description rdf:about=""\n'
        '    xmlns:xmp="http://ns.adobe.com/xap/1.0/"\n'
        f'    xmlns:kontext="{XMP_NAMESPACE}">\n'
        f"   <xmp:CreatorTool>{SOFTWARE}</xmp:CreatorTool>\n"
        f"{properties}"
        "  </rdf:Description>\n"
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="w"?>').encode()


def _xmp_fields(packet: bytes) -> dict[str, str]:
    """Our properties in an XMP packet, written as elements or as attributes."""
    from xml.etree import ElementTree  # noqa: PLC0415  (only reading needs it: runs start faster)

    _refuse_dtd(packet)
    try:
        root = ElementTree.fromstring(packet)  # noqa: S314  (no DTD, so no entity to expand)
    except ElementTree.ParseError as exc:
        raise ValueError(f"is damaged (its XMP packet is not well-formed XML: {exc})") from None
    namespace = f"{{{XMP_NAMESPACE}}}"
    fields: dict[str, str] = {}
    for description in root.iter(f"{{{_RDF}}}Description"):
        for name, value in description.attrib.items():
            if name.startswith(namespace):
                fields.setdefault(name[len(namespace):], value)
        for child in description:
            if child.tag.startswith(namespace):
                fields.setdefault(child.tag[len(namespace):], child.text or "")
    return fields


class _DoctypeError(Exception):
    """Raised from expat's handler: stops the parse where the DOCTYPE starts."""


def _refuse_dtd(packet: bytes) -> None:
    """Raise ValueError if ``packet`` has a DOCTYPE (XMP never has one), in whatever encoding
    it is written: expat decodes it and reports the DOCTYPE where it starts, before any entity
    in it is declared, let alone expanded."""
    from xml.parsers import expat  # noqa: PLC0415

    def refuse(*_declaration: object) -> None:
        raise _DoctypeError

    parser = expat.ParserCreate()
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse  # only inside a DOCTYPE: a second guard
    try:
        parser.Parse(packet, True)
    except _DoctypeError:
        raise ValueError("is damaged (its XMP packet has a DOCTYPE, which XMP never "
                         "has)") from None
    except expat.ExpatError as exc:
        raise ValueError(f"is damaged (its XMP packet is not well-formed XML: {exc})") from None
