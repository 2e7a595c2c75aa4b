"""What a run does with the recipe's lock: read it before anything is paid, take results from
the exported files it lists (refilling the cache), and write it again from the run's records.

Only runs of the ``bfl`` provider read or write a lock: a preview's images are stand-ins, keyed
apart, and never a record of what a recipe made.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from kontext_pipeline._support.files import IrregularFileError, TooLargeError, read_regular
from kontext_pipeline._support.images import ImageCheckError, inspect_bytes
from kontext_pipeline.errors import LockError
from kontext_pipeline.outputs._export import EXTENSIONS, Exported, variant_folders
from kontext_pipeline.outputs._provenance import strip_provenance
from kontext_pipeline.outputs._records import StepRecord
from kontext_pipeline.plan._locked import combine_sides, covers_recipe, file_problem
from kontext_pipeline.plan._plan import Plan, Task
from kontext_pipeline.plan._resolution import FromFiles
from kontext_pipeline.store._cache import Cache, CacheEntry
from kontext_pipeline.store._cache_checks import MAX_OBJECT_BYTES, format_of
from kontext_pipeline.store._lock import (
    Lock,
    LockedFile,
    LockedStep,
    lock_path,
    read_lock,
    read_sides,
)

__all__ = ["LOCKING_PROVIDER", "load_lock", "lock_exports", "locked_entry", "new_lock",
           "refill_from_files"]

LOCKING_PROVIDER = "bfl"
"""The one provider whose runs read and write locks."""

_MAX_EXPORTED_BYTES = MAX_OBJECT_BYTES + 16 * 1024 * 1024  # an image plus its provenance


def load_lock(plan: Plan, *, relock: bool,
              on_note: Callable[[str], None] | None = None) -> Lock | None:
    """The lock of ``plan``'s recipe (None: there is none, or the run does not use one).
    Raises :class:`LockError` when it cannot be read, unless ``relock`` (the run is to write
    it again; ``on_note`` is told): then a lock merged with conflicts is read side by side
    (:func:`~kontext_pipeline.plan._locked.combine_sides`), and any other is ignored."""
    if plan.provider != LOCKING_PROVIDER:
        return None
    path = lock_path(plan.spec.path)
    try:
        lock = read_lock(path, recipe=plan.spec.file)
    except LockError as error:
        if not relock:
            raise
        sides = read_sides(path) if error.cause == "conflict" else []
        first = error.problems[0].format() if error.problems else "unknown"
        if sides:
            lock = combine_sides(plan, sides, path.parent)
            said = (f"{path} was merged with conflicts: both sides are read, and each step's "
                    "record is kept whose image the cache or the exported files hold")
        else:
            said = (f"{path} cannot be read, so it is ignored and written again from the "
                    f"cache alone ({len(error.problems)} problem"
                    f"{'' if len(error.problems) == 1 else 's'}, the first: {first})")
        if on_note is not None:
            on_note(said)
        return lock if sides else None
    if lock is not None and lock.provider != plan.provider:
        return None  # another provider's: nothing in it is this run's
    return lock


def refill_from_files(cache: Cache, base: Path, *, store: bool = True) -> FromFiles:
    """Takes a locked task's result from the first of its exported files (paths relative to
    ``base``, the lock's folder) that is intact: a regular file (no link followed) whose
    sha256 is the lock's, which without its provenance is the image the lock records. That
    image is stored in the cache, as a result the provider gave is (``store`` False: it is
    only checked, as ``plan`` does)."""

    def take(task: Task, record: LockedStep) -> CacheEntry | str:
        if not record.files:
            return "no exported file holds its image"
        reasons: list[str] = []
        for file in record.files:
            image = _intact_image(base, file, record)
            if isinstance(image, str):
                reasons.append(image)
                continue
            fmt = format_of(image[:12])
            if fmt != task.params.output_format:
                reasons.append(f"{file.path} is not {task.params.output_format} image")
                continue
            try:
                info = inspect_bytes(image)
            except ImageCheckError as exc:
                reasons.append(f"{file.path} {exc}")
                continue
            entry = CacheEntry(
                key=record.key, object=record.output_sha256, size=len(image), format=fmt,
                width=info.width, height=info.height, provider=task.provider,
                model=record.model, seed=record.seed, request_id=record.request_id or "",
                credits=record.credits, duration_s=0.0, created_at=time.time(),
                request=task.request_document(record.inputs_sha256))
            # CacheError: the run could not store a result either
            return cache.store(image, entry) if store else entry
        return "; ".join(reasons) + "; the step runs again"

    return take


def _intact_image(base: Path, file: LockedFile, record: LockedStep) -> bytes | str:
    """The image the exported file was made of if the file is as the lock records it, else
    why not."""
    data = _read_exported(base / file.path)
    if isinstance(data, str):
        return f"its exported file {file.path} {data}"
    if hashlib.sha256(data).hexdigest() != file.file_sha256:
        return f"its exported file {file.path} was changed since the lock was written"
    image = strip_provenance(data)
    if image is None:
        image = data  # exported as generated: a format without provenance
    if hashlib.sha256(image).hexdigest() != record.output_sha256:
        return f"its exported file {file.path} is not the image the lock records"
    return image


def _read_exported(path: Path) -> bytes | str:
    """The bytes of a regular file (no link followed), or why they cannot be read."""
    try:
        return read_regular(path, _MAX_EXPORTED_BYTES)
    except FileNotFoundError:
        return "is missing"
    except IrregularFileError as exc:
        return f"{exc.strerror} (not read)"
    except TooLargeError:
        return "is larger than any image"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"


def locked_entry(task: Task, record: LockedStep) -> CacheEntry:
    """The result of a task the lock holds without its bytes (an intermediate step whose image
    no file holds), as the steps that read it see it: its hash is the lock's. It is in no
    cache: nothing reads its image."""
    return CacheEntry(
        key=record.key, object=record.output_sha256, size=0, format=task.params.output_format,
        width=0, height=0, provider=task.provider, model=record.model, seed=record.seed,
        request_id=record.request_id or "", credits=record.credits, duration_s=0.0,
        created_at=0.0, request=task.request_document(record.inputs_sha256))


def new_lock(plan: Plan, records: Sequence[StepRecord],
             exported: Mapping[tuple[str, str], Exported], *, out_dir: Path,
             old: Lock | None, held: Mapping[str, LockedStep]) -> Lock:
    """The lock after a run of ``plan``, given the lock as it is now (``old``): a record of
    each step of the variants the run planned that finished, with the files exported for it
    (relative to the lock's folder); a step that failed has none. When ``--var`` selected a few
    variants, every record of the others is kept, even of a variant or step the recipe no
    longer has; a run of the whole recipe drops those. ``held``: the lock's records of the
    tasks whose results it held without their bytes (kept, with the files still as recorded:
    the run exported none for them)."""
    spec = plan.spec
    base = lock_path(spec.path).parent
    folders = variant_folders(plan)
    mine = {(r.task.variant, r.task.step): r for r in records}
    steps: dict[tuple[str, str], LockedStep] = {}
    selected = {v.id for v in plan.variants}
    if old is not None and not covers_recipe(plan):
        steps.update((where, record) for where, record in old.steps.items()
                     if where[0] not in selected)
    for variant in sorted(selected):
        for step in (step.id for step in spec.steps):
            record = mine.get((variant, step))
            if record is None or not record.ok or record.entry is None:
                continue
            if record.task.id in held:  # unchanged: a run that changes nothing keeps the lock
                kept = held[record.task.id]
                intact = tuple(f for f in kept.files if file_problem(base, f) is None)
                steps[(variant, step)] = kept if intact == kept.files else replace(
                    kept, files=intact)
                continue
            files = _files(plan, record, exported.get((variant, step)), folders[variant],
                           (out_dir, base))
            steps[(variant, step)] = _locked(record, files)
    return Lock(recipe=spec.path.name, pipeline=spec.name, provider=plan.provider,
                steps=steps)


def lock_exports(plan: Plan, lock: Lock | None, out_dir: Path) -> tuple[dict[str, str], set[str]]:
    """The files ``lock`` lists inside ``out_dir`` (by path relative to it), in two parts: those
    of the variants the run makes (path -> sha256: what the last run exported, for a fresh
    checkout that has no manifest of it: one the run no longer makes is removed if still as
    recorded), and those of the variants the run keeps the records of (``--var``): never
    removed."""
    made: dict[str, str] = {}
    kept: set[str] = set()
    if lock is None:
        return made, kept
    base = Path(os.path.abspath(lock_path(plan.spec.path).parent))
    root = os.path.abspath(out_dir)
    selected = {v.id for v in plan.variants}
    whole = covers_recipe(plan)
    for (variant, _), record in lock.steps.items():
        for file in record.files:
            relative = os.path.relpath(os.path.normpath(base / file.path), root)
            if relative == os.curdir or relative.split(os.sep)[0] == os.pardir:
                continue  # outside --out: not this run's to remove
            relative = Path(relative).as_posix()
            if whole or variant in selected:
                made[relative] = file.file_sha256
            else:
                kept.add(relative)
    return made, kept


def _locked(record: StepRecord, files: tuple[LockedFile, ...]) -> LockedStep:
    task, entry = record.task, record.entry
    assert entry is not None  # noqa: S101  (a finished step has its entry)
    return LockedStep(
        variant=task.variant, step=task.step, key=entry.key, model=task.model, seed=task.seed,
        prompt=task.prompt, params=task.params.as_dict(),
        inputs_sha256=tuple(record.inputs_sha256), output_sha256=entry.object,
        credits=entry.credits, request_id=entry.request_id or None, files=files)


def _files(plan: Plan, record: StepRecord, exported: Exported | None, folder: str,
           places: tuple[Path, Path]) -> tuple[LockedFile, ...]:
    """Every file the run exported the step's image to: each output naming it (the same bytes:
    the provenance names no output), or its image under ``steps/``; relative to the lock's
    folder (``places``: the output folder, the lock's folder)."""
    out_dir, base = places
    if exported is None:
        return ()
    paths = [exported.path]
    if exported.output and record.entry is not None:
        extension = EXTENSIONS.get(record.entry.format, f".{record.entry.format}")
        paths.extend("/".join(p for p in (folder, f"{name}{extension}") if p)
                     for name, step in plan.spec.outputs.items() if step == record.task.step)
    files = []
    for relative in dict.fromkeys(paths):
        try:
            path = os.path.relpath(os.path.abspath(out_dir / relative), os.path.abspath(base))
        except ValueError:  # another drive (Windows): no relative path reaches it
            continue
        files.append(LockedFile(Path(path).as_posix(), exported.sha256))
    return tuple(files)
