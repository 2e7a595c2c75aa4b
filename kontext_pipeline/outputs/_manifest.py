"""``manifest.json``, the contract CI jobs read: one typed model that writes it and reads it back.

The fields are named as in the file. The writer writes every field, as
``schemas/manifest.schema.json`` describes exactly (no field it does not list). The reader checks
every field it uses and ignores the fields it does not know, so that a manifest from a later
version still reads; the fields added since the first version (``images``,
``output_file_sha256``, ``image``) may be absent from an older one, and ``request_id`` too.
``shard`` is written only by a run of one shard (``--shard I/N``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from kontext_pipeline._support import jsonsafe
from kontext_pipeline.errors import UsageError
from kontext_pipeline.outputs._records import Status
from kontext_pipeline.plan._explain import LastRun
from kontext_pipeline.plan._shards import Shard, parse_shard

if TYPE_CHECKING:
    from kontext_pipeline.outputs._export import Exported
    from kontext_pipeline.outputs._records import StepRecord
    from kontext_pipeline.plan._plan import Plan, Task

__all__ = ["MANIFEST", "MAX_MANIFEST_BYTES", "CacheUse", "Manifest", "Source", "SourceImage",
           "StepResult", "Totals", "build_manifest", "last_run", "manifest_schema_text",
           "parse_manifest", "read_manifest"]

MANIFEST = "manifest.json"
"""The manifest's file name in ``--out``."""

MAX_MANIFEST_BYTES = 256 * 1024 * 1024
"""More than any run writes (256 variants of long prompts); a larger file is not read."""

CacheUse = Literal["hit", "miss"]
Source = Literal["input", "step"]

_HEX = frozenset("0123456789abcdef")
_OPTIONAL_TEXT = (str, type(None))
_NUMBER = (int, float)


@dataclass(frozen=True)
class SourceImage:
    """One image a step read: a recipe input (``path``, relative to the manifest's folder) or
    an earlier step's output."""

    name: str
    source: Source
    path: str | None = None

    def as_dict(self) -> dict[str, str]:
        """The image as the manifest writes it (``path`` only for an input)."""
        listed = {"name": self.name, "source": self.source}
        return listed if self.path is None else {**listed, "path": self.path}


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
    output_sha256: str | None  # the image as generated; None when the step made none
    output: str | None  # the exported file, when the recipe's ``outputs`` name the step
    output_file_sha256: str | None  # that file as written (provenance inserted); None when
    # not exported, or written before manifests recorded it
    cache: CacheUse
    request_id: str | None
    credits: int | float  # FLUX.2 bills per megapixel: the API's echoed cost may be fractional
    duration_s: float
    status: Status
    error: str | None
    images: tuple[SourceImage, ...] | None  # None: written before manifests recorded them
    image: str | None = None  # the step's full-size image under --out, relative to the
    # manifest's folder with / separators: ``output`` for an exported step, else under
    # ``steps/``; None when it made none, or written before manifests recorded it

    def as_dict(self) -> dict[str, Any]:
        """The step as the manifest writes it, its fields in the file's order."""
        return {
            "variant": self.variant, "step": self.step, "model": self.model,
            "prompt": self.prompt, "seed": self.seed, "params": dict(self.params),
            "inputs_sha256": list(self.inputs_sha256), "output_sha256": self.output_sha256,
            "output": self.output, "output_file_sha256": self.output_file_sha256,
            "image": self.image, "cache": self.cache, "request_id": self.request_id,
            "credits": self.credits, "duration_s": self.duration_s, "status": self.status,
            "error": self.error,
            "images": None if self.images is None else [i.as_dict() for i in self.images],
        }


@dataclass(frozen=True)
class Totals:
    """The run's counts: steps, cache hits, provider calls, credits spent, steps not done."""

    steps: int
    cache_hits: int
    calls: int
    credits: int | float
    failed: int


@dataclass(frozen=True)
class Manifest:
    """A run of one recipe: its totals and every step of every variant, in run order;
    ``shard``: the share of the variants the run had (``--shard``), None for all of them."""

    pipeline: str
    spec_sha256: str
    provider: str
    totals: Totals
    steps: tuple[StepResult, ...]
    shard: Shard | None = None

    @property
    def variants(self) -> list[str]:
        """The variant ids, in the order of their first step."""
        return list(dict.fromkeys(step.variant for step in self.steps))

    def as_dict(self) -> dict[str, Any]:
        """The JSON document of ``manifest.json``."""
        totals = self.totals
        return {
            "pipeline": self.pipeline, "spec_sha256": self.spec_sha256,
            "provider": self.provider,
            **({} if self.shard is None else {"shard": str(self.shard)}),
            "totals": {"steps": totals.steps, "cache_hits": totals.cache_hits,
                       "calls": totals.calls, "credits": totals.credits,
                       "failed": totals.failed},
            "steps": [step.as_dict() for step in self.steps],
        }

    def to_json(self) -> str:
        """The text of ``manifest.json``: indented by two, non-ASCII characters as they are,
        and a final line feed."""
        return json.dumps(self.as_dict(), indent=2, ensure_ascii=False) + "\n"


def manifest_schema_text() -> str:
    """The manifest's JSON Schema as shipped in the package (``schema --manifest`` prints it)."""
    return (resources.files("kontext_pipeline") / "schemas" / "manifest.schema.json").read_text(
        encoding="utf-8")


# --- writing -----------------------------------------------------------------------------


def build_manifest(plan: Plan, records: Sequence[StepRecord],
                   exported: Mapping[tuple[str, str], Exported], *,
                   base: str | os.PathLike[str] | None = None,
                   shard: Shard | None = None) -> Manifest:
    """The manifest of a run of ``plan``: a record per task, in run order. ``exported`` holds
    the file each step's image was exported to (see :func:`.export_outputs`): an output sets
    ``output``, ``output_file_sha256`` and ``image``, an intermediate step ``image`` alone.

    Each step lists the ``images`` it read, in order; an input's ``path`` is relative to
    ``base`` (the manifest's folder) with ``/`` separators, or absolute without ``base``.
    ``shard``: the share of the variants ``plan`` was narrowed to (``--shard``)."""
    steps = tuple(_step_result(record, exported.get((record.task.variant, record.task.step)),
                               base) for record in records)
    return Manifest(
        pipeline=plan.spec.name, spec_sha256=plan.spec.sha256, provider=plan.provider,
        totals=Totals(
            steps=len(records),
            cache_hits=sum(1 for r in records if r.cache == "hit"),
            calls=sum(1 for r in records if r.cache == "miss" and r.status in ("done",
                                                                               "failed")),
            credits=round(sum(r.credits for r in records), 2),
            failed=sum(1 for r in records if r.status in ("failed", "skipped"))),
        steps=steps, shard=shard)


def _step_result(record: StepRecord, exported: Exported | None,
                 base: str | os.PathLike[str] | None) -> StepResult:
    task, entry = record.task, record.entry
    output = exported if exported is not None and exported.output else None
    return StepResult(
        variant=task.variant, step=task.step, model=task.model, prompt=task.prompt,
        seed=task.seed, params=task.params.as_dict(), inputs_sha256=tuple(record.inputs_sha256),
        output_sha256=entry.object if entry else None,
        output=output.path if output else None,
        output_file_sha256=output.sha256 if output else None,
        cache=record.cache, request_id=entry.request_id if entry else None,
        credits=record.credits, duration_s=round(record.duration_s, 3), status=record.status,
        error=record.error, images=_source_images(task, base),
        image=exported.path if exported is not None else None)


def _source_images(task: Task, base: str | os.PathLike[str] | None) -> tuple[SourceImage, ...]:
    listed = []
    for image in task.images:
        if image.path is None:
            listed.append(SourceImage(image.name, "step"))
            continue
        try:
            path = os.path.relpath(image.path, base) if base is not None else str(image.path)
        except ValueError:  # Windows: the input is on another drive
            path = str(image.path)
        listed.append(SourceImage(image.name, "input", path.replace(os.sep, "/")))
    return tuple(listed)


# --- reading -----------------------------------------------------------------------------


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


def last_run(out_dir: Path) -> LastRun | None:
    """The run recorded in ``out_dir``'s manifest, to explain what changed since (see
    :mod:`kontext_pipeline.plan._explain`); None when there is none that can be read."""
    path = out_dir / MANIFEST
    try:
        manifest = read_manifest(path)
    except UsageError:
        return None
    return LastRun(path, manifest.provider, {(s.variant, s.step): s for s in manifest.steps})


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

    def count(name: str) -> Any:
        return _get(totals, name, _NUMBER if name == "credits" else int, f"totals.{name}")

    return Manifest(
        pipeline=_get(top, "pipeline", str, "pipeline"),
        spec_sha256=_get(top, "spec_sha256", str, "spec_sha256"),
        provider=_get(top, "provider", str, "provider"),
        totals=Totals(*(count(name) for name in ("steps", "cache_hits", "calls", "credits",
                                                 "failed"))),
        steps=tuple(_step(record, f"steps[{index}]") for index, record in enumerate(steps)),
        shard=_shard(top["shard"]) if "shard" in top else None,
    )


def _shard(value: Any) -> Shard:
    if not isinstance(value, str):
        raise ValueError(f"shard: expected a string, got {_kind(value)}")
    try:
        shard = parse_shard(value)
    except UsageError:
        shard = None
    if shard is None or str(shard) != value:
        raise ValueError(f"shard: expected I/N (1 <= I <= N), got {json.dumps(value)}")
    return shard


_STEP_FIELDS: tuple[tuple[str, type | tuple[type, ...]], ...] = (
    ("variant", str), ("step", str), ("model", str), ("prompt", str), ("seed", int),
    ("params", dict), ("inputs_sha256", list), ("output_sha256", _OPTIONAL_TEXT),
    ("output", _OPTIONAL_TEXT), ("cache", str), ("credits", _NUMBER), ("duration_s", _NUMBER),
    ("status", str), ("error", _OPTIONAL_TEXT),
)
_ADDED_FIELDS = ("request_id", "output_file_sha256", "image")  # optional text, may be absent
_CHOICES: Mapping[str, tuple[str, ...]] = {"cache": get_args(CacheUse),
                                           "status": get_args(Status)}


def _step(value: Any, where: str) -> StepResult:
    record = _mapping(value, where)
    fields = {key: _get(record, key, kind, f"{where}.{key}") for key, kind in _STEP_FIELDS}
    fields.update({key: _get(record, key, _OPTIONAL_TEXT, f"{where}.{key}")
                   if key in record else None for key in _ADDED_FIELDS})
    for key, choices in _CHOICES.items():
        _choice(fields[key], choices, f"{where}.{key}")
    for index, digest in enumerate(fields["inputs_sha256"]):
        _digest(digest, f"{where}.inputs_sha256[{index}]")
    for key in ("output_sha256", "output_file_sha256"):
        if fields[key] is not None:
            _digest(fields[key], f"{where}.{key}")
    images = record.get("images")
    return StepResult(**{**fields, "inputs_sha256": tuple(fields["inputs_sha256"]),
                         "duration_s": float(fields["duration_s"])},
                      images=None if images is None else _images(images, f"{where}.images"))


def _images(value: Any, where: str) -> tuple[SourceImage, ...]:
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list, got {_kind(value)}")
    images = []
    for index, item in enumerate(value):
        image = _mapping(item, f"{where}[{index}]")
        at = f"{where}[{index}]"
        source = _get(image, "source", str, f"{at}.source")
        _choice(source, get_args(Source), f"{at}.source")
        images.append(SourceImage(
            name=_get(image, "name", str, f"{at}.name"), source=source,
            path=_get(image, "path", _OPTIONAL_TEXT, f"{at}.path") if "path" in image else None))
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


def _choice(value: str, choices: tuple[str, ...], where: str) -> None:
    if value not in choices:
        listed = ", ".join(f'"{choice}"' for choice in choices)
        raise ValueError(f"{where}: expected one of {listed}, got {json.dumps(value)}")


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
