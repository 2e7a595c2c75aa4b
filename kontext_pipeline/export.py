"""Exporting a run's outputs into ``--out``: atomic writes, never outside the directory.

Each exported PNG or JPEG is the cache object with its provenance inserted (see
:mod:`kontext_pipeline.provenance`); the pixels are the generated ones, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kontext_pipeline.cache import Cache, CacheEntry
from kontext_pipeline.errors import OutputError
from kontext_pipeline.executor import StepRecord
from kontext_pipeline.files import cannot_make, write_atomic
from kontext_pipeline.plan import Plan
from kontext_pipeline.provenance import Provenance, encode_provenance, insert_provenance

__all__ = ["EXPORT_STATE", "EXTENSIONS", "check_out_dir", "export_outputs", "variant_folders"]

EXPORT_STATE = ".kontext-export.json"
"""Beside the outputs: what was exported where, to skip writing files that did not change."""

EXTENSIONS = {"png": ".png", "jpeg": ".jpg"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]+")
_MAX_FOLDER = 120


def variant_folders(plan: Plan) -> dict[str, str]:
    """The sub-folder of each variant: none without a matrix, else its id made a safe name."""
    if not plan.spec.matrix_keys:
        return {v.id: "" for v in plan.variants}
    folders: dict[str, str] = {}
    taken: set[str] = set()
    for variant in plan.variants:
        name = _UNSAFE.sub("_", variant.id).strip("._") or "variant"
        if len(name) > _MAX_FOLDER or name.casefold() in taken:  # one folder on macOS, Windows
            digest = hashlib.sha256(variant.id.encode()).hexdigest()[:8]
            name = f"{name[:_MAX_FOLDER]}-{digest}"
        taken.add(name.casefold())
        folders[variant.id] = name
    return folders


def _inside(root: Path, relative: str) -> Path:
    """``root / relative``, refused if it resolves (through a symlink, say) outside ``root``
    (which must be resolved already)."""
    target = (root / relative).resolve()
    if not target.is_relative_to(root):
        raise OutputError(f"refusing to write {relative!r}: it is outside {root}")
    return target


def _load_state(path: Path) -> dict[str, list[Any]]:
    try:
        state = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _unchanged(target: Path, recorded: Any, fingerprint: str) -> bool:
    """Whether ``target`` is still the file this tool last exported there as ``fingerprint``."""
    try:
        stat = target.stat()
    except OSError:
        return False
    return bool(recorded == [fingerprint, stat.st_size, stat.st_mtime_ns])


def _provenance(record: StepRecord, entry: CacheEntry) -> bytes | None:
    """The provenance bytes to insert into ``entry``'s image (None for a format without)."""
    if entry.format not in EXTENSIONS:
        return None
    task = record.task
    return encode_provenance(Provenance(
        recipe=task.pipeline, variant=task.variant, step=task.step, model=entry.model,
        seed=entry.seed, provider=entry.provider, cache_key=entry.key, prompt=task.prompt),
        entry.format)


def _write(target: Path, source: Path, provenance: bytes | None) -> None:
    if provenance is None:
        write_atomic(target, source=source)  # the kernel copies
    else:
        write_atomic(target, insert_provenance(source.read_bytes(), provenance))


def check_out_dir(out_dir: Path) -> None:
    """Raise now if ``out_dir`` could not be made (a run checks before any request, so as to
    fail before paying); nothing is created."""
    problem = cannot_make(out_dir)
    if problem is not None:
        raise _cannot_create(out_dir, problem)


def _cannot_create(out_dir: Path, error: OSError) -> OutputError:
    return OutputError(f"cannot create the output directory {out_dir}: "
                       f"{error.strerror or error}; choose another --out")


def export_outputs(plan: Plan, records: Sequence[StepRecord], cache: Cache,
                   out_dir: Path) -> dict[tuple[str, str], str]:
    """Write each finished output, with its provenance, into ``out_dir``; returns (variant,
    step) -> relative path.

    A file this tool exported before, with the same image and provenance and untouched since
    (same size and modification time as recorded in ``.kontext-export.json``), is not written
    again: a fully cached run reads no image.
    """
    folders = variant_folders(plan)
    by_step = {(r.task.variant, r.task.step): r for r in records}
    exported: dict[tuple[str, str], str] = {}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cannot_create(out_dir, exc) from exc
    root = out_dir.resolve()
    state_path = out_dir / EXPORT_STATE
    previous = _load_state(state_path)
    state: dict[str, list[Any]] = {}
    for variant in plan.variants:
        for name, step in plan.spec.outputs.items():
            record = by_step.get((variant.id, step))
            if record is None or not record.ok or record.entry is None:
                continue
            entry = record.entry
            ext = EXTENSIONS.get(entry.format, f".{entry.format}")
            relative = "/".join(p for p in (folders[variant.id], f"{name}{ext}") if p)
            target = _inside(root, relative)
            try:
                provenance = _provenance(record, entry)
            except ValueError as exc:  # too large for a JPEG segment
                raise OutputError(f"cannot write {out_dir / relative}: {exc}") from exc
            fingerprint = entry.object if provenance is None else hashlib.sha256(
                entry.object.encode() + b"\0" + provenance).hexdigest()
            try:
                if not _unchanged(target, previous.get(relative), fingerprint):
                    _write(target, cache.object_path(entry.object), provenance)
                stat = target.stat()
            except OSError as exc:
                raise OutputError(f"cannot write {out_dir / relative}: {exc.strerror or exc}"
                                 ) from exc
            except ValueError as exc:  # the cached image is damaged
                raise OutputError(f"cannot write {out_dir / relative}: its cached image {exc}; "
                                  "`kontext-pipeline cache verify` finds damaged images"
                                  ) from exc
            state[relative] = [fingerprint, stat.st_size, stat.st_mtime_ns]
            exported.setdefault((variant.id, step), relative)
    try:
        write_atomic(state_path, json.dumps(state, sort_keys=True).encode())
    except OSError as exc:
        raise OutputError(f"cannot write {state_path}: {exc.strerror or exc}") from exc
    return exported
