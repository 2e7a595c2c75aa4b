"""The plan against the lock: each task's key as the lock's records give it, and what differs.

A task that reads an earlier step's output has its key only once that output's bytes are known.
The lock records every finished step's ``output_sha256``, so the keys of the whole plan follow
from it without the cache: a step whose own record agrees with the plan hands its locked output
to the steps that read it. :func:`compare` says, per step and per exported file, where the
recipe, the lock and the files part ways; :func:`check` is ``kontext-pipeline check`` as a
function (no key, no cache, no network).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kontext_pipeline._support.files import IrregularFileError, sha256_regular
from kontext_pipeline.plan._explain import Change, request_changes
from kontext_pipeline.plan._plan import Plan, Task, build_plan, var_overrides
from kontext_pipeline.store._lock import Lock, LockedFile, LockedStep, lock_path, read_lock

__all__ = ["MAX_FILE_BYTES", "CheckResult", "Difference", "DifferenceKind", "check",
           "check_plan", "combine_sides", "compare", "covers_recipe", "file_problem",
           "keys_from_lock", "read_plan_lock"]

MAX_FILE_BYTES = 256 * 1024 * 1024
"""A larger file is no image a run exported: it is not read to the end."""

DifferenceKind = Literal["no lock", "renamed", "new", "changed", "gone", "missing", "edited",
                         "unreadable", "unexported"]
"""``no lock``: the recipe has none; ``renamed``: the lock is of the pipeline's old name;
``new``: a step the lock does not hold; ``changed``: a
step whose request differs from its record; ``gone``: a record of a step or variant the recipe
no longer has; ``missing``, ``edited``, ``unreadable``: a file the lock lists; ``unexported``:
one of the recipe's outputs that no file the lock lists for its step is named for (an output
added or renamed since the run)."""

_EXTENSIONS = {"png": ".png", "jpeg": ".jpg"}  # as the export names files


@dataclass(frozen=True)
class Difference:
    """A step or an exported file that does not match the lock. ``variant`` and ``step`` are
    None for the recipe as a whole; ``path`` is the file's path as the lock lists it (relative
    to the lock's folder); ``changes`` says how a ``changed`` step's request differs."""

    kind: DifferenceKind
    variant: str | None
    step: str | None
    reason: str
    changes: tuple[Change, ...] = ()
    path: str | None = None

    def __str__(self) -> str:
        """``variant / step: reason``, or just the reason for the recipe as a whole."""
        if self.variant is None:
            return self.reason
        return f"{self.variant} / {self.step}: {self.reason}"

    def as_dict(self) -> dict[str, Any]:
        """The difference as ``check --json`` prints it."""
        return {"kind": self.kind, "variant": self.variant, "step": self.step,
                "path": self.path, "reason": self.reason,
                "changes": [{"field": c.field, "name": c.name, "old": c.old, "new": c.new}
                            for c in self.changes]}


@dataclass(frozen=True)
class CheckResult:
    """What ``check`` found for one recipe: ``ok`` when its plan, its lock and the exported
    files agree. ``steps`` and ``files`` count the tasks planned and the locked files
    verified; ``differences`` says, one by one, what does not match."""

    recipe: str
    lock: str
    steps: int
    files: int
    differences: tuple[Difference, ...]

    @property
    def ok(self) -> bool:
        return not self.differences

    def summary(self) -> str:
        """``RECIPE: N steps and M files match the lock``."""
        return (f"{self.recipe}: {_count(self.steps, 'step')} and {_count(self.files, 'file')} "
                f"match the lock")

    def as_dict(self) -> dict[str, Any]:
        """The result as ``check --json`` prints it."""
        return {"recipe": self.recipe, "lock": self.lock, "ok": self.ok, "steps": self.steps,
                "files": self.files,
                "differences": [d.as_dict() for d in self.differences]}


def keys_from_lock(plan: Plan, lock: Lock) -> dict[str, str | None]:
    """Each task's cache key (task id -> key) when every step input is the ``output_sha256``
    its parent step has in ``lock``. None when a parent has no record in the lock, or its
    record no longer agrees with the plan (its key differs, or its own key is None): that
    parent runs again, and what it makes is not known yet. A task without step inputs has its
    static key."""
    keys: dict[str, str | None] = {}
    for variant in plan.variants:
        outputs: dict[str, str | None] = {}  # step id -> the locked output of one that agrees
        for task in plan.tasks_of(variant.id):
            key = _key(task, outputs)
            keys[task.id] = key
            record = lock.steps.get((task.variant, task.step))
            if key is not None and record is not None and record.key == key:
                outputs[task.step] = record.output_sha256
    return keys


def _key(task: Task, outputs: Mapping[str, str | None]) -> str | None:
    hashes: list[str] = []
    for image in task.images:
        digest = outputs.get(image.name) if image.is_step else image.sha256
        if digest is None:
            return None
        hashes.append(digest)
    return task.key(hashes)


def compare(plan: Plan, lock: Lock, base: Path) -> list[Difference]:
    """Where ``plan`` and ``lock`` part ways, in plan order: each step the lock does not hold,
    each step whose request differs from its record (how: :class:`Change`), each locked file
    (under ``base``, the lock's folder) missing, edited or not a regular file, and then each
    record of a step or variant the recipe no longer has (of the planned variants only, unless
    the plan covers every variant)."""
    keys = keys_from_lock(plan, lock)
    differences: list[Difference] = []
    if lock.pipeline != plan.spec.name:  # in no key: every record still holds
        differences.append(Difference("renamed", None, None, f"pipeline renamed: "
                                      f"{lock.pipeline} -> {plan.spec.name}; run to update "
                                      "the lock"))
    for variant in plan.variants:
        outputs: dict[str, str | None] = {}
        for task in plan.tasks_of(variant.id):
            record = lock.steps.get((task.variant, task.step))
            if record is None:
                differences.append(Difference("new", task.variant, task.step,
                                              "not in the lock (never run)"))
                continue
            if keys[task.id] == record.key:
                outputs[task.step] = record.output_sha256
            else:
                differences.append(_changed(plan, lock, task, record, outputs))
            differences.extend(_file_differences(record, base))
            differences.extend(_unexported(plan, task, record))
    differences.extend(_gone(plan, lock))
    return differences


def _unexported(plan: Plan, task: Task, record: LockedStep) -> list[Difference]:
    """The recipe's outputs of ``task``'s step that no file the lock lists for it is named for
    (a step that is not an output may have no file: its image is not needed)."""
    names = {file.path.rsplit("/", 1)[-1] for file in record.files}
    extension = _EXTENSIONS.get(task.params.output_format, f".{task.params.output_format}")
    return [Difference("unexported", task.variant, task.step,
                       f"output '{name}' is in no file the lock lists ({name}{extension}); run "
                       "the recipe to export it")
            for name, step in plan.spec.outputs.items()
            if step == task.step and f"{name}{extension}" not in names]


def covers_recipe(plan: Plan) -> bool:
    """Whether ``plan`` has every variant of its recipe (no ``--var`` selected a few): only
    then are a lock's records of variants the plan lacks no longer the recipe's."""
    return len(plan.variants) == len(plan.spec.variants)


def _changed(plan: Plan, lock: Lock, task: Task, record: LockedStep,
             outputs: Mapping[str, str | None]) -> Difference:
    changes = tuple(request_changes(task, record, outputs))
    if changes:
        reason = "; ".join(_checked(change) for change in changes)
    elif plan.provider != lock.provider:
        reason = f"provider changed: {lock.provider} -> {plan.provider}"
    else:
        reason = ("its key is not the lock's, though its request is the same (a lock written "
                  "by another version of kontext-pipeline?)")
    return Difference("changed", task.variant, task.step, reason, changes)


def _checked(change: Change) -> str:
    """A change as ``check`` and ``plan`` word it against the lock."""
    if change.field == "inputs":
        return f"takes {change.new} input images, the lock's record {change.old}"
    if change.field == "input image":
        return f"input image '{change.name}' changed"
    if change.field == "input step":
        return f"input from step '{change.name}' changed"
    return f"{change.name if change.field == 'param' else change.field} changed: {change.detail}"


def _gone(plan: Plan, lock: Lock) -> list[Difference]:
    planned = {variant.id for variant in plan.variants}
    everything = covers_recipe(plan)
    steps = {step.id for step in plan.spec.steps}
    return [Difference("gone", variant, step, "in the lock, but no longer in the recipe")
            for variant, step in lock.steps
            if (variant in planned or everything)
            and not (variant in planned and step in steps)]


def _file_differences(record: LockedStep, base: Path) -> list[Difference]:
    differences = []
    for file in record.files:
        problem = file_problem(base, file)
        if problem is not None:
            kind, reason = problem
            differences.append(Difference(kind, record.variant, record.step,
                                          f"file {file.path} {reason}", path=file.path))
    return differences


def file_problem(base: Path, file: LockedFile) -> tuple[DifferenceKind, str] | None:
    """Why the locked ``file`` (its path relative to ``base``) is not as the lock records it,
    or None when its bytes hash to ``file_sha256``. A symbolic link is not followed, nothing but
    a regular file is read, and never more than :data:`MAX_FILE_BYTES`."""
    path = base / file.path
    try:
        digest = sha256_regular(path, MAX_FILE_BYTES)
    except FileNotFoundError:
        return "missing", "is missing"
    except IrregularFileError as exc:
        return "unreadable", f"{exc.strerror}; only a regular file is trusted"
    except OSError as exc:
        return "unreadable", f"cannot be read ({exc.strerror or exc})"
    if digest is None:
        return "edited", f"was edited (larger than any image a run exports, {MAX_FILE_BYTES} bytes)"
    if digest != file.file_sha256:
        return "edited", "was edited (sha256 differs from the lock)"
    return None


def combine_sides(plan: Plan, sides: Sequence[Lock], base: Path) -> Lock:
    """One lock out of the sides of a lock git merged with conflicts (``sides``: ours first):
    per step of ``plan``, the record whose key is the step's (given the records chosen for the
    steps before it), one whose files (under ``base``) are intact first, else the first
    side's; the records of steps the plan lacks, from the first side that has them. The run
    then takes each record's result from the cache or its files, as from any lock."""
    chosen: dict[tuple[str, str], LockedStep] = {}
    for variant in plan.variants:
        outputs: dict[str, str | None] = {}
        for task in plan.tasks_of(variant.id):
            where = (task.variant, task.step)
            records = [side.steps[where] for side in sides if where in side.steps]
            if not records:
                continue
            key = _key(task, outputs)
            agreeing = [record for record in records if record.key == key]
            if agreeing:
                chosen[where] = next((r for r in agreeing if _intact(r, base)), agreeing[0])
                outputs[task.step] = chosen[where].output_sha256
            else:
                chosen[where] = records[0]
    for side in sides:
        for where, record in side.steps.items():
            chosen.setdefault(where, record)
    return Lock(sides[0].recipe, sides[0].pipeline, sides[0].provider, chosen)


def _intact(record: LockedStep, base: Path) -> bool:
    return bool(record.files) and all(file_problem(base, f) is None for f in record.files)


def read_plan_lock(plan: Plan) -> Lock | None:
    """The lock of ``plan``'s recipe, None when there is none. Raises
    :class:`~kontext_pipeline.errors.LockError` when it cannot be read."""
    return read_lock(lock_path(plan.spec.path), recipe=plan.spec.file)


def check_plan(plan: Plan, lock: Lock | None) -> CheckResult:
    """:func:`check` of a plan already made (for the ``bfl`` provider, the one locks are of)
    against its recipe's ``lock`` (:func:`read_plan_lock`)."""
    spec = plan.spec
    shown = str(lock_path(Path(spec.file)))
    if lock is None:
        missing = Difference("no lock", None, None,
                             f"no lock file ({shown}); run the recipe to write it")
        return CheckResult(spec.file, shown, len(plan.tasks), 0, (missing,))
    differences = compare(plan, lock, lock_path(spec.path).parent)
    files = sum(len(record.files) for task in plan.tasks
                if (record := lock.steps.get((task.variant, task.step))) is not None)
    return CheckResult(spec.file, shown, len(plan.tasks), files, tuple(differences))


def check(recipe: str | os.PathLike[str], *,
          vars: Mapping[str, str | int | float | bool] | None = None) -> CheckResult:
    """Whether ``recipe``'s lock and the files it lists match the recipe, as ``kontext-pipeline
    check`` says: with no key, no cache and no network. ``vars`` sets recipe variables and
    selects matrix variants (``--var``).

    Raises :class:`~kontext_pipeline.errors.SpecError` for an invalid recipe and
    :class:`~kontext_pipeline.errors.LockError` for a lock that cannot be read; a mismatch does
    not raise (``ok`` is false, ``differences`` says what)."""
    from kontext_pipeline.recipe._spec import load_spec  # noqa: PLC0415  (import stays light)

    spec = load_spec(recipe, env=os.environ)
    plan = build_plan(spec, overrides=var_overrides(vars), env=os.environ, provider="bfl")
    return check_plan(plan, read_plan_lock(plan))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"

