"""Exporting a run's images into ``--out``: atomic writes, never outside the directory.

The recipe's ``outputs`` go where they name (``poster.png``, ``color=red/poster.png``); every
other step that made an image goes under ``steps/`` (``steps/recolor.png``,
``steps/color=red/recolor.png``), so that each image a run made is there at full size.

Each exported PNG or JPEG is the cache object with its provenance inserted (see
:mod:`._provenance`); the pixels are the generated ones, byte for byte. The object
is read once, without following a link, and its bytes are checked before they are written.

What the last run into the same folder exported and this run no longer does (the other
variants after ``--var color=teal``, a renamed output) is removed, but only a file that is still
exactly as exported; a folder left empty goes with it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kontext_pipeline._support import jsonsafe
from kontext_pipeline._support.files import cannot_make, write_atomic
from kontext_pipeline.errors import OutputError
from kontext_pipeline.outputs._provenance import Provenance, encode_provenance, insert_provenance
from kontext_pipeline.outputs._records import StepRecord
from kontext_pipeline.outputs._staging import Staging
from kontext_pipeline.outputs._stale import Recorded, last_exports, remove_stale
from kontext_pipeline.plan._plan import Plan, Task
from kontext_pipeline.store._cache import Cache, CacheEntry

__all__ = ["EXPORT_STATE", "EXTENSIONS", "STEPS", "Exported", "check_out_dir", "export_files",
           "export_outputs", "exported_bytes", "variant_folders"]

EXPORT_STATE = ".kontext-export.json"
"""Beside the outputs: what was exported where, to skip writing files that did not change."""

EXTENSIONS = {"png": ".png", "jpeg": ".jpg"}
STEPS = "steps"
"""The folder of ``--out`` that holds the images of the steps that are not outputs."""
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]+")
_MAX_FOLDER = 120
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class Exported:
    """A file a run wrote into ``--out``: its path relative to it (``/`` separators), the
    sha256 of the file as written, provenance included, and whether it is one of the recipe's
    ``outputs`` (the manifest's ``output`` and ``output_file_sha256``) or an intermediate step's
    image under ``steps/`` (the manifest's ``image`` alone)."""

    path: str
    sha256: str
    output: bool = True


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


def _inside(root: Path, relative: str, folders: dict[str, Path]) -> Path:
    """``root / relative``, refused if it resolves (through a symlink, say) outside ``root``
    (which must be resolved already). Each folder is resolved once (``folders`` keeps them):
    a run exports hundreds of files into a few folders."""
    folder, _, name = relative.rpartition("/")
    parent = folders.get(folder)
    if parent is None:
        parent = folders[folder] = (root / folder).resolve()
    target = parent / name
    if target.is_symlink():
        target = target.resolve()
    if not target.is_relative_to(root):
        raise OutputError(f"refusing to write {relative!r}: it is outside {root}")
    return target


def _load_state(path: Path) -> dict[str, list[Any]]:
    try:
        state = jsonsafe.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _unchanged(target: Path, recorded: Any, fingerprint: str) -> str | None:
    """The sha256 of ``target`` if it is still the file this tool last exported there as
    ``fingerprint`` (else None: it is written again)."""
    try:
        stat = target.stat()
    except OSError:
        return None
    if (isinstance(recorded, list) and len(recorded) == 4
            and recorded[:3] == [fingerprint, stat.st_size, stat.st_mtime_ns]
            and _is_digest(recorded[3])):
        return str(recorded[3])
    return None


def _is_digest(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


def _provenance(task: Task, entry: CacheEntry) -> bytes | None:
    """The provenance bytes to insert into ``entry``'s image (None for a format without)."""
    if entry.format not in EXTENSIONS:
        return None
    return encode_provenance(Provenance(
        recipe=task.pipeline, variant=task.variant, step=task.step, model=entry.model,
        seed=entry.seed, provider=entry.provider, cache_key=entry.key, prompt=task.prompt),
        entry.format)


def _fingerprint(entry: CacheEntry, provenance: bytes | None) -> str:
    """What an exported file is made of: the image and the provenance inserted into it."""
    return entry.object if provenance is None else hashlib.sha256(
        entry.object.encode() + b"\0" + provenance).hexdigest()


def export_files(plan: Plan, folders: Mapping[str, str], task: Task, format_: str) -> list[str]:
    """Where (relative to ``--out``) the image of ``task`` goes: each output naming its step,
    else its place under ``steps/``; ``folders`` is :func:`variant_folders`."""
    folder = folders[task.variant]
    names = [name for name, step in plan.spec.outputs.items() if step == task.step]
    if names:
        return [_output_path(folder, name, format_) for name in names]
    return [_step_path(folder, task.step, format_)]


def exported_bytes(task: Task, entry: CacheEntry, image: bytes) -> tuple[str, bytes]:
    """The file ``task``'s image (``image``, checked as the entry's) is exported as, and what
    it is made of (to tell, at the export, that it is still the file to write). ValueError:
    the provenance does not fit, or the image is damaged."""
    provenance = _provenance(task, entry)
    data = image if provenance is None else insert_provenance(image, provenance)
    return _fingerprint(entry, provenance), data


def _write(target: Path, cache: Cache, entry: CacheEntry, provenance: bytes | None) -> str:
    """Write the file; returns its sha256. The object is read once, and those very bytes are
    checked (a regular file, the entry's format, its sha256) and written."""
    image = cache.read(entry)
    if provenance is None:
        write_atomic(target, image)
        return entry.object  # the bytes just checked have this sha256
    data = insert_provenance(image, provenance)
    write_atomic(target, data)
    return hashlib.sha256(data).hexdigest()


def check_out_dir(out_dir: Path) -> None:
    """Raise now if ``out_dir`` could not be made (a run checks before any request, so as to
    fail before paying); nothing is created."""
    problem = cannot_make(out_dir)
    if problem is not None:
        raise _cannot_create(out_dir, problem)


def _cannot_create(out_dir: Path, error: OSError) -> OutputError:
    return OutputError(f"cannot create the output directory {out_dir}: "
                       f"{error.strerror or error}; choose another --out")


def export_outputs(plan: Plan, records: Sequence[StepRecord], cache: Cache, out_dir: Path, *,
                   on_warning: Callable[[str], None] | None = None,
                   recorded: Mapping[str, str] | None = None,
                   keep: Collection[str] = (),
                   staging: Staging | None = None) -> dict[tuple[str, str], Exported]:
    """Write each finished step's image, with its provenance, into ``out_dir``: the outputs
    where the recipe names them, the other steps' under ``steps/``; returns (variant, step) ->
    the file written.

    A file this tool exported before, with the same image and provenance and untouched since
    (same size and modification time as recorded in ``.kontext-export.json``), is not written
    again: a fully cached run reads no image.

    Then the files the last run of this recipe into ``out_dir`` exported, and that this plan
    does not export, are removed if they are still as exported (see :mod:`._stale`);
    ``on_warning`` is told of each file kept. ``recorded``: more files the last run exported
    (path -> the sha256 of the file as written; the recipe's lock says so where no manifest
    does, on a fresh checkout); ``keep``: files never removed (those whose lock records the
    run keeps); ``staging``: files written ahead, moved into place where they are still the
    file to write (see :mod:`._staging`).
    """
    folders = variant_folders(plan)
    by_step = {(r.task.variant, r.task.step): r for r in records}
    exported: dict[tuple[str, str], Exported] = {}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cannot_create(out_dir, exc) from exc
    root = out_dir.resolve()
    state_path = out_dir / EXPORT_STATE
    previous = _load_state(state_path)
    before = last_exports(out_dir, plan.spec.name, {
        relative: Recorded(file_sha256=str(value[3])) for relative, value in previous.items()
        if isinstance(value, list) and len(value) == 4 and _is_digest(value[3])}, {
        relative: Recorded(file_sha256=digest) for relative, digest in (recorded or {}).items()
        if _is_digest(digest)})
    state: dict[str, list[Any]] = {}
    export = functools.partial(_export, cache=cache, root=root, out_dir=out_dir,
                               previous=previous, state=state, folders={}, staging=staging)
    for variant in plan.variants:
        for name, step in plan.spec.outputs.items():
            record = by_step.get((variant.id, step))
            if record is None or not record.ok or record.entry is None:
                continue
            relative = _output_path(folders[variant.id], name, record.entry.format)
            digest = export(record.task, record.entry, relative)
            exported.setdefault((variant.id, step), Exported(relative, digest))
    outputs = set(plan.spec.outputs.values())
    for record in records:
        task = record.task
        if task.step in outputs or not record.ok or record.entry is None:
            continue
        relative = _step_path(folders[task.variant], task.step, record.entry.format)
        digest = export(task, record.entry, relative)
        exported[(task.variant, task.step)] = Exported(relative, digest, output=False)
    try:
        write_atomic(state_path, json.dumps(state, sort_keys=True).encode())
    except OSError as exc:
        raise OutputError(f"cannot write {state_path}: {exc.strerror or exc}") from exc
    remove_stale(out_dir, before, keep=_planned(plan, folders) | set(state) | set(keep),
                 on_warning=on_warning or (lambda _message: None))
    return exported


def _output_path(folder: str, name: str, format_: str) -> str:
    return "/".join(p for p in (folder, f"{name}{EXTENSIONS.get(format_, f'.{format_}')}") if p)


def _step_path(folder: str, step: str, format_: str) -> str:
    return "/".join(p for p in (STEPS, folder, f"{step}{EXTENSIONS.get(format_, f'.{format_}')}")
                    if p)


def _export(task: Task, entry: CacheEntry, relative: str, *, cache: Cache, root: Path,
            out_dir: Path, previous: Mapping[str, Any], state: dict[str, list[Any]],
            folders: dict[str, Path], staging: Staging | None) -> str:
    """Write ``entry``'s image with its provenance to ``relative`` (unless it is there as last
    exported, or staged: then it is moved there), record it in ``state``; returns the sha256
    of the file."""
    target = _inside(root, relative, folders)
    try:
        provenance = _provenance(task, entry)
    except ValueError as exc:  # too large for a JPEG segment
        raise OutputError(f"cannot write {out_dir / relative}: {exc}") from exc
    fingerprint = _fingerprint(entry, provenance)
    try:
        digest = _unchanged(target, previous.get(relative), fingerprint)
        if digest is None and staging is not None:
            digest = staging.place(relative, fingerprint, target)
        if digest is None:
            digest = _write(target, cache, entry, provenance)
        stat = target.stat()
    except OSError as exc:
        raise OutputError(f"cannot write {out_dir / relative}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # the cached image is damaged
        raise OutputError(f"cannot write {out_dir / relative}: its cached image {exc}; "
                          "`kontext-pipeline cache verify` finds damaged images") from exc
    state[relative] = [fingerprint, stat.st_size, stat.st_mtime_ns, digest]
    return digest


def _planned(plan: Plan, folders: dict[str, str]) -> set[str]:
    """Every path ``plan`` exports to when all its steps finish (a step that failed in this
    run leaves its last export in place)."""
    paths: set[str] = set()
    outputs = set(plan.spec.outputs.values())
    for variant in plan.variants:
        folder = folders[variant.id]
        formats = {task.step: task.params.output_format for task in plan.tasks_of(variant.id)}
        paths.update(_output_path(folder, name, formats[step])
                     for name, step in plan.spec.outputs.items())
        paths.update(_step_path(folder, step, format_) for step, format_ in formats.items()
                     if step not in outputs)
    return paths
