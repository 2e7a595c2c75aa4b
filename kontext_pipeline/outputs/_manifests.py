"""Reading a run's ``manifest.json`` back, checked, as typed records (what a report shows).

A manifest is a contract that only grows: fields added since the first version (``images``,
``output_file_sha256``) may be absent from an older one, and fields this module does not use are
ignored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kontext_pipeline._support import jsonsafe
from kontext_pipeline.errors import UsageError

__all__ = ["MAX_MANIFEST_BYTES", "Manifest", "SourceImage", "StepResult", "Totals",
           "parse_manifest", "read_manifest"]

MAX_MANIFEST_BYTES = 256 * 1024 * 1024
"""More than any run writes (256 variants of long prompts); a larger file is not read."""

_HEX = frozenset("0123456789abcdef")
_OPTIONAL_TEXT = (str, type(None))
_NUMBER = (int, float)
_STEP_FIELDS: tuple[tuple[str, type | tuple[type, ...]], ...] = (
    ("variant", str), ("step", str), ("model", str), ("prompt", str), ("seed", int),
    ("params", dict), ("inputs_sha256", list), ("output_sha256", _OPTIONAL_TEXT),
    ("output", _OPTIONAL_TEXT), ("cache", str), ("credits", int), ("duration_s", _NUMBER),
    ("status", str), ("error", _OPTIONAL_TEXT),
)


@dataclass(frozen=True)
class SourceImage:
    """One image a step read: a recipe input (``path``, relative to the manifest's folder) or
    an earlier step's output."""

    name: str
    source: str  # "input" or "step"
    path: str | None = None


@dataclass(frozen=True)
class StepResult:
    """One step of one variant, as the run recorded it."""

    variant: str
    step: str
    model: str
    prompt: str
    seed: int
    params: Mapping[str, Any]
    inputs_sha256: tuple[str, ...]
    output_sha256: str | None
    output: str | None
    cache: str
    credits: int
    duration_s: float
    status: str
    error: str | None
    images: tuple[SourceImage, ...] | None  # None: written before manifests recorded them
    output_file_sha256: str | None = None  # the exported file (provenance inserted); None
    # when not exported, or written before manifests recorded it


@dataclass(frozen=True)
class Totals:
    steps: int
    cache_hits: int
    calls: int
    credits: int
    failed: int


@dataclass(frozen=True)
class Manifest:
    """A run of one recipe: its totals and every step of every variant, in run order."""

    pipeline: str
    spec_sha256: str
    provider: str
    totals: Totals
    steps: tuple[StepResult, ...]

    @property
    def variants(self) -> list[str]:
        """The variant ids, in the order of their first step."""
        return list(dict.fromkeys(step.variant for step in self.steps))


def read_manifest(path: Path) -> Manifest:
    """Read and check the manifest at ``path``; :class:`UsageError` says what is wrong and what
    to do."""
    folder = path.parent
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise UsageError(f"{path} is {size / 1e6:.0f} MB, larger than any manifest a run "
                             "writes; name the --out folder of a run")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(_not_found(path)) from None
    except NotADirectoryError:
        raise UsageError(f"{folder} is not a folder; name the --out folder of a run") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a folder, not a manifest; run the recipe again to "
                         "rewrite it") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        document = jsonsafe.loads(raw)
    except UnicodeDecodeError:
        raise UsageError(f"{path} is damaged (not UTF-8 text); run the recipe again to "
                         "rewrite it") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is damaged (not JSON: {exc.msg} at line {exc.lineno}, "
                         f"column {exc.colno}); run the recipe again to rewrite it") from None
    try:
        return parse_manifest(document)
    except ValueError as exc:
        raise UsageError(f"{path} is not a manifest kontext-pipeline wrote ({exc}); run the "
                         "recipe again to rewrite it") from None


def _not_found(path: Path) -> str:
    folder = path.parent
    if not folder.exists():
        return (f"no such folder {folder}; name the --out folder of a run (by default "
                "out/<recipe name>)")
    inside = sorted(p.parent.name for p in folder.glob(f"*/{path.name}"))
    if inside:
        shown = ", ".join(inside[:5]) + (", …" if len(inside) > 5 else "")
        return (f"{folder} has no {path.name}, but its folders {shown} have one (a run of "
                "several recipes): report each of them")
    return (f"{folder} has no {path.name}; name the --out folder of a run (by default "
            "out/<recipe name>), or run the recipe first")


def parse_manifest(document: Any) -> Manifest:
    """Check a manifest's document; ``ValueError`` names the first field that is wrong."""
    top = _mapping(document, "the document")
    totals = _mapping(_get(top, "totals", dict, "totals"), "totals")
    steps = _get(top, "steps", list, "steps")
    return Manifest(
        pipeline=_get(top, "pipeline", str, "pipeline"),
        spec_sha256=_get(top, "spec_sha256", str, "spec_sha256"),
        provider=_get(top, "provider", str, "provider"),
        totals=Totals(*(_get(totals, name, int, f"totals.{name}")
                        for name in ("steps", "cache_hits", "calls", "credits", "failed"))),
        steps=tuple(_step(record, f"steps[{index}]") for index, record in enumerate(steps)),
    )


def _step(value: Any, where: str) -> StepResult:
    record = _mapping(value, where)

    def get(key: str, kind: type | tuple[type, ...]) -> Any:
        return _get(record, key, kind, f"{where}.{key}")

    fields = {key: get(key, kind) for key, kind in _STEP_FIELDS}  # in the manifest's order
    for index, digest in enumerate(fields["inputs_sha256"]):
        _digest(digest, f"{where}.inputs_sha256[{index}]")
    if fields["output_sha256"] is not None:
        _digest(fields["output_sha256"], f"{where}.output_sha256")
    file_digest = get("output_file_sha256", _OPTIONAL_TEXT) if (
        "output_file_sha256" in record) else None
    if file_digest is not None:
        _digest(file_digest, f"{where}.output_file_sha256")
    images = record.get("images")
    return StepResult(**{**fields, "inputs_sha256": tuple(fields["inputs_sha256"]),
                         "duration_s": float(fields["duration_s"])},
                      images=None if images is None else _images(images, f"{where}.images"),
                      output_file_sha256=file_digest)


def _images(value: Any, where: str) -> tuple[SourceImage, ...]:
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list, got {_kind(value)}")
    images = []
    for index, item in enumerate(value):
        image = _mapping(item, f"{where}[{index}]")
        images.append(SourceImage(
            name=_get(image, "name", str, f"{where}[{index}].name"),
            source=_get(image, "source", str, f"{where}[{index}].source"),
            path=_get(image, "path", _OPTIONAL_TEXT, f"{where}[{index}].path")
            if "path" in image else None))
    return tuple(images)


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected an object, got {_kind(value)}")
    return value


def _get(record: Mapping[str, Any], key: str, kind: type | tuple[type, ...],
         where: str) -> Any:
    if key not in record:
        raise ValueError(f"{where} is missing")
    value = record[key]
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise ValueError(f"{where}: expected {_expected(kind)}, got {_kind(value)}")
    return value


def _digest(value: Any, where: str) -> None:
    if not isinstance(value, str) or len(value) != 64 or not set(value) <= _HEX:
        raise ValueError(f"{where}: not a sha256 digest")


_NAMES: dict[type, str] = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
                           int: "an integer", float: "a number", type(None): "null"}


def _expected(kind: type | tuple[type, ...]) -> str:
    if kind == _NUMBER:
        return "a number"
    return " or ".join(_NAMES[k] for k in (kind if isinstance(kind, tuple) else (kind,)))


def _kind(value: Any) -> str:
    return _NAMES.get(type(value), type(value).__name__)
