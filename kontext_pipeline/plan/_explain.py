"""Why a step will run: what changed in its request since the last run recorded in ``--out``.

A step runs when its cache key is not in the cache. The key is made of the provider, model,
rendered prompt, seed, request parameters and the input images' bytes, so comparing these with
the step's record in the last ``manifest.json`` says which of them changed: the words of a prompt
(as a word diff), a seed, a parameter, an input image, or an upstream step that runs again.
The outputs read that manifest (``outputs._manifest.last_run``) and pass it in as a
:class:`LastRun`.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kontext_pipeline.plan._plan import Task
from kontext_pipeline.plan._resolution import Resolved

__all__ = ["LastRun", "RecordedStep", "explain_misses", "word_diff"]

_CONTEXT = 3  # words kept around a change


class RecordedStep(Protocol):
    """What the last run recorded of a step (a manifest's step record; the outputs read it)."""

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
    @property
    def status(self) -> str: ...


@dataclass(frozen=True)
class LastRun:
    """The last run recorded in an output directory: its manifest, its provider and its step
    records by (variant, step)."""

    manifest: Path
    provider: str
    steps: Mapping[tuple[str, str], RecordedStep]


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
        changes = [*_request_changes(task, before),
                   *_input_changes(task, before, runs_again, outputs)]
        reasons[task.id] = "; ".join(changes) if changes else _unchanged(before)
    return reasons


def _request_changes(task: Task, before: RecordedStep) -> list[str]:
    changes = []
    if task.model != before.model:
        changes.append(f"model: {before.model} -> {task.model}")
    if task.prompt != before.prompt:
        changes.append(f"prompt: {word_diff(before.prompt, task.prompt)}")
    if task.seed != before.seed:
        changes.append(f"seed: {before.seed} -> {task.seed}")
    old_params = before.params
    for name, value in task.params.as_dict().items():
        if name in old_params and old_params[name] != value:
            changes.append(f"{name}: {json.dumps(old_params[name])} -> {json.dumps(value)}")
    return changes


def _input_changes(task: Task, before: RecordedStep, runs_again: set[str],
                   outputs: Mapping[str, str]) -> list[str]:
    old_hashes = before.inputs_sha256
    if len(old_hashes) != len(task.images):
        return [f"it takes {len(task.images)} input images, not {len(old_hashes)}"]
    changes = []
    for image, old_hash in zip(task.images, old_hashes, strict=True):
        if image.is_step:
            upstream = f"{task.pipeline}/{task.variant}/{image.name}"
            if upstream in runs_again:
                changes.append(f"its input '{image.name}' runs again")
            elif outputs.get(upstream) != old_hash:
                changes.append(f"its input '{image.name}' is another image than last time")
        elif image.sha256 != old_hash:
            changes.append(f"input image '{image.name}' changed "
                           f"({old_hash[:12]} -> {(image.sha256 or '')[:12]})")
    return changes


def _unchanged(before: RecordedStep) -> str:
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
