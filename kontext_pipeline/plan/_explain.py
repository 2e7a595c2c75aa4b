"""Why a step will run: what changed in its request since the last run recorded in ``--out``.

A step runs when its cache key is not in the cache. The key is made of the provider, model,
rendered prompt, seed, request parameters and the input images' bytes, so comparing these with
the step's record in the last ``manifest.json`` says which of them changed: the words of a prompt
(as a word diff), a seed, a parameter, an input image, or an upstream step that runs again.
The outputs read that manifest (``outputs._manifest.last_run``) and pass it in as a
:class:`LastRun`. The comparison itself, :func:`request_changes`, is the one ``check`` and
``plan`` make against the lock's record of a step (:mod:`kontext_pipeline.plan._locked`).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from kontext_pipeline.plan._plan import Task
from kontext_pipeline.plan._resolution import Resolved

__all__ = ["Change", "LastRun", "RecordedStep", "RunStep", "explain_misses", "request_changes",
           "word_diff"]

_CONTEXT = 3  # words kept around a change


class RecordedStep(Protocol):
    """What a record says of a step's request: a manifest's step record (the last run) or the
    lock's (:class:`~kontext_pipeline.store._lock.LockedStep`) both are one."""

    @property
    def model(self) -> str: ...
    @property
    def prompt(self) -> str: ...
    @property
    def seed(self) -> int: ...
    @property
    def params(self) -> Mapping[str, Any]: ...
    @property
    def inputs_sha256(self) -> Sequence[str]: ...


class RunStep(RecordedStep, Protocol):
    """A step as the last run recorded it in its manifest: with how it ended."""

    @property
    def status(self) -> str: ...


@dataclass(frozen=True)
class LastRun:
    """The last run recorded in an output directory: its manifest, its provider and its step
    records by (variant, step)."""

    manifest: Path
    provider: str
    steps: Mapping[tuple[str, str], RunStep]


ChangeField = Literal["model", "prompt", "seed", "param", "inputs", "input image", "input step"]


@dataclass(frozen=True)
class Change:
    """One way a task's request differs from a recorded step's. ``name`` is the parameter's or
    the input image's name; ``old`` and ``new`` the recorded and the planned value (for an
    input, its sha256; ``new`` is None for an input step whose output is not known yet: it
    runs again)."""

    field: ChangeField
    old: Any
    new: Any
    name: str | None = None

    @property
    def detail(self) -> str:
        """The change in a few words: a word diff for a prompt, else ``old -> new``."""
        if self.field == "prompt":
            return word_diff(self.old, self.new)
        if self.field == "param":
            return f"{json.dumps(self.old)} -> {json.dumps(self.new)}"
        return f"{self.old} -> {self.new}"


def request_changes(task: Task, before: RecordedStep,
                    outputs: Mapping[str, str | None]) -> list[Change]:
    """How ``task``'s request differs from ``before``: model, prompt, seed, each parameter both
    name, the number of input images, and each input image whose bytes differ. ``outputs``
    holds the sha256 of each earlier step's output as the caller knows it (None: it runs
    again); an input step is a change when its hash is not the recorded one."""
    changes = []
    if task.model != before.model:
        changes.append(Change("model", before.model, task.model))
    if task.prompt != before.prompt:
        changes.append(Change("prompt", before.prompt, task.prompt))
    if task.seed != before.seed:
        changes.append(Change("seed", before.seed, task.seed))
    old_params = before.params
    for name, value in task.params.as_dict().items():
        if name in old_params and old_params[name] != value:
            changes.append(Change("param", old_params[name], value, name))
    old_hashes = before.inputs_sha256
    if len(old_hashes) != len(task.images):
        return [*changes, Change("inputs", len(old_hashes), len(task.images))]
    for image, old_hash in zip(task.images, old_hashes, strict=True):
        new_hash = outputs.get(image.name) if image.is_step else image.sha256
        if new_hash != old_hash:
            field: ChangeField = "input step" if image.is_step else "input image"
            changes.append(Change(field, old_hash, new_hash, image.name))
    return changes


def explain_misses(resolved: Sequence[Resolved], last: LastRun | None) -> dict[str, str]:
    """For each task that will run (not cached): why, compared with ``last`` (task id ->
    reason). Nothing when there is no last run to compare with."""
    if last is None:
        return {}
    runs_again = {r.task.id for r in resolved if not r.hit}
    outputs = {r.task.id: r.entry.object for r in resolved if r.entry is not None}
    reasons = {}
    for item in resolved:
        if item.hit:
            continue
        task = item.task
        if task.provider != last.provider:
            reasons[task.id] = f"the provider changed: {last.provider} -> {task.provider}"
            continue
        before = last.steps.get((task.variant, task.step))
        if before is None:
            reasons[task.id] = "a new step: the last run had no such step in this variant"
            continue
        known: dict[str, str | None] = {}  # each input step's output; None: it runs again
        for image in task.images:
            upstream = f"{task.pipeline}/{task.variant}/{image.name}"
            if image.is_step:
                known[image.name] = None if upstream in runs_again else outputs.get(upstream)
        changes = request_changes(task, before, known)
        reasons[task.id] = ("; ".join(_explained(c) for c in changes) if changes
                            else _unchanged(before))
    return reasons


def _explained(change: Change) -> str:
    if change.field == "param":
        return f"{change.name}: {change.detail}"
    if change.field == "inputs":
        return f"it takes {change.new} input images, not {change.old}"
    if change.field == "input image":
        return (f"input image '{change.name}' changed "
                f"({change.old[:12]} -> {(change.new or '')[:12]})")
    if change.field == "input step":
        if change.new is None:
            return f"its input '{change.name}' runs again"
        return f"its input '{change.name}' is another image than last time"
    return f"{change.field}: {change.detail}"


def _unchanged(before: RunStep) -> str:
    status = before.status
    if status in ("failed", "skipped"):
        return f"the same request as last time, which did not finish ({status})"
    return ("the same request as last time, but its result is not in this cache (another "
            "--cache-dir, or the entry was removed)")


def word_diff(old: str, new: str) -> str:
    """The words that changed from ``old`` to ``new``, as ``[-removed-]{+added+}`` with a few
    words of context (``…`` for the rest)."""
    a, b = old.split(), new.split()
    if a == b:
        return "only its spacing or line breaks changed"
    opcodes = difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes()
    parts: list[str] = []
    for index, (tag, i1, i2, j1, j2) in enumerate(opcodes):
        if tag == "equal":
            parts.append(_context(a[i1:i2], first=index == 0, last=index == len(opcodes) - 1))
            continue
        removed = f"[-{' '.join(a[i1:i2])}-]" if i2 > i1 else ""
        added = f"{{+{' '.join(b[j1:j2])}+}}" if j2 > j1 else ""
        parts.append(removed + added)
    return " ".join(part for part in parts if part)


def _context(words: list[str], *, first: bool, last: bool) -> str:
    """Unchanged words between changes: a few next to each change, ``…`` for the rest."""
    head = [] if first else words[:_CONTEXT]
    tail = [] if last else words[-_CONTEXT:]
    if len(words) <= len(head) + len(tail):
        return " ".join(words)
    return " ".join([*head, "…", *tail])
