"""``report --merge INTO SHARD_DIR…``: the folders of the N shards of a run (``run --shard
I/N``) combined into one, as a run of every variant would have written it: one manifest, every
file the shards exported, and (the command's part) one report.

The shards must be all N of one run: one recipe (name and ``spec_sha256``), one provider, one N,
each index once, no variant in two of them. Every file a shard's manifest lists (an output, or
an intermediate step's image under ``steps/``) is checked before anything is written (a regular
file, no link followed, its recorded sha256), then copied into INTO, checked again as it is
read, never outside INTO. The merged manifest has the variants in their ids' natural order
(``size=9`` before ``size=10``), each with its steps in run order, and totals counted again from
them; it records no shard. What the last run or merge into INTO exported and this merge does not
is removed, as a run removes it (:mod:`._stale`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from kontext_pipeline._support.files import write_atomic
from kontext_pipeline.errors import OutputError, UsageError
from kontext_pipeline.outputs._manifest import (
    MANIFEST,
    Manifest,
    SourceImage,
    StepResult,
    Totals,
    read_manifest,
)
from kontext_pipeline.outputs._merge_files import check_into, copy_files, shard_files
from kontext_pipeline.outputs._stale import last_exports, remove_stale
from kontext_pipeline.plan._shards import Shard

__all__ = ["Merged", "ShardRun", "merge_manifests", "merge_shards", "read_shards"]

_DIGITS = re.compile(r"([0-9]+)")


@dataclass(frozen=True)
class ShardRun:
    """One shard's folder and its manifest (which records its ``shard``)."""

    folder: Path
    manifest: Manifest

    @property
    def shard(self) -> Shard:
        if self.manifest.shard is None:  # read_shards reads no other
            raise ValueError(f"{self.folder / MANIFEST} records no shard")
        return self.manifest.shard


@dataclass(frozen=True)
class Merged:
    """A merge: where it went, its manifest (as written to ``into/manifest.json``), the shards
    it combined (by index) and how many files it copied."""

    into: Path
    manifest: Manifest
    shards: tuple[ShardRun, ...]
    files: int


def merge_shards(into: Path, folders: Sequence[Path], *,
                 on_warning: Callable[[str], None] | None = None) -> Merged:
    """Combine the shards in ``folders`` into ``into`` (see the module); the report is the
    caller's to write. :class:`UsageError` (nothing written) when INTO is a link or inside a
    shard's folder, when the folders are not every shard of one run, or when a file a shard
    exported is missing or changed; :class:`OutputError` when INTO cannot be written.
    ``on_warning`` is told of each file of an earlier run into INTO that is kept."""
    check_into(into, folders)
    shards = read_shards(folders)
    files = shard_files([(s.folder, str(s.shard), s.manifest.steps) for s in shards])
    merged = merge_manifests(shards, into)
    before = last_exports(into, merged.pipeline, {})
    copied = copy_files(into, files, [s.folder for s in shards])
    remove_stale(into, before, keep=set(copied),
                 on_warning=on_warning or (lambda _message: None))
    try:
        write_atomic(into / MANIFEST, merged.to_json().encode(), inside=into)
    except OSError as exc:
        raise OutputError(f"cannot write {into / MANIFEST}: {exc.strerror or exc}; choose "
                          "another INTO") from exc
    return Merged(into, merged, tuple(shards), len(copied))


def read_shards(folders: Sequence[Path]) -> list[ShardRun]:
    """The manifests of ``folders``, by shard index, checked to be every shard of one run;
    :class:`UsageError` says what is wrong and what to do."""
    if not folders:
        raise UsageError("no shard folder to merge: name the folders of the N shards of one run")
    seen: dict[Path, Path] = {}
    for folder in folders:
        real = folder.resolve()
        if real in seen:
            raise UsageError(f"{folder} is named twice (as {seen[real]} too); name each "
                             "shard's folder once")
        seen[real] = folder
    shards = [ShardRun(folder, read_manifest(folder / MANIFEST)) for folder in folders]
    for run in shards:
        if run.manifest.shard is None:
            raise UsageError(f"{run.folder / MANIFEST} records no shard: it is a run of every "
                             "variant, not one of `run --shard I/N`; name the folders of the "
                             "N shards of one run")
    for run in shards[1:]:
        _same_run(shards[0], run)
    ordered = _every_shard(shards)
    owner: dict[str, ShardRun] = {}
    for run in ordered:
        for variant in run.manifest.variants:
            other = owner.setdefault(variant, run)
            if other is not run:
                raise UsageError(f"variant {variant} is in both {other.folder} (shard "
                                 f"{other.shard}) and {run.folder} (shard {run.shard}): the "
                                 "shards of one run share no variant; run them again")
    return ordered


def _every_shard(shards: Sequence[ShardRun]) -> list[ShardRun]:
    """``shards`` by index, refused unless they are 1/N to N/N, each once."""
    first = shards[0]
    by_index: dict[int, ShardRun] = {}
    for run in shards:
        if run.shard.count != first.shard.count:
            raise UsageError(f"{first.folder} holds shard {first.shard} but {run.folder} "
                             f"shard {run.shard}: they are not shards of one run; name the "
                             "folders of the N shards of one run")
        twin = by_index.get(run.shard.index)
        if twin is not None:
            raise UsageError(f"{twin.folder} and {run.folder} both hold shard {run.shard}; "
                             "name each shard's folder once")
        by_index[run.shard.index] = run
    count = first.shard.count
    missing = [index for index in range(1, count + 1) if index not in by_index]
    if missing:
        held = ", ".join(f"{index}/{count}" for index in sorted(by_index))
        lacking = ", ".join(f"{index}/{count}" for index in missing)
        raise UsageError(f"shard{'' if len(missing) == 1 else 's'} {lacking} "
                         f"{'is' if len(missing) == 1 else 'are'} missing (the folders given "
                         f"hold {held}); name the folder of every shard, 1/{count} to "
                         f"{count}/{count}")
    return [by_index[index] for index in sorted(by_index)]


def _same_run(first: ShardRun, run: ShardRun) -> None:
    """Refuse ``run`` unless it is of ``first``'s recipe, as it was, and provider."""
    a, b = first.manifest, run.manifest
    redo = "name the folders of the N shards of one run"
    if a.pipeline != b.pipeline:
        raise UsageError(f"{run.folder} is a run of the recipe {b.pipeline}, {first.folder} of "
                         f"{a.pipeline}; {redo}")
    if a.spec_sha256 != b.spec_sha256:
        raise UsageError(f"{run.folder} and {first.folder} ran different versions of the "
                         f"recipe {a.pipeline} (spec_sha256 {b.spec_sha256[:12]}… and "
                         f"{a.spec_sha256[:12]}…); run every shard of one version, or {redo}")
    if a.provider != b.provider:
        raise UsageError(f"{run.folder} ran with the provider {b.provider}, {first.folder} "
                         f"with {a.provider}; {redo}")


def merge_manifests(shards: Sequence[ShardRun], into: Path) -> Manifest:
    """One manifest of the shards' steps (see the module for the order), totals counted from
    them, no shard recorded; each recipe input's path made relative to ``into`` (see
    :func:`_rebase`)."""
    first = shards[0].manifest
    steps: list[StepResult] = []
    for run in shards:
        base = Path(os.path.abspath(run.folder))
        steps += [replace(step, images=_rebased(step.images, base, into))
                  for step in run.manifest.steps]
    order = sorted({step.variant for step in steps}, key=_natural)
    place = {variant: number for number, variant in enumerate(order)}
    steps.sort(key=lambda step: place[step.variant])  # stable: run order within a variant
    return Manifest(
        pipeline=first.pipeline, spec_sha256=first.spec_sha256, provider=first.provider,
        totals=Totals(
            steps=len(steps),
            cache_hits=sum(1 for s in steps if s.cache == "hit"),
            calls=sum(1 for s in steps if s.cache == "miss" and s.status in ("done", "failed")),
            credits=round(sum(s.credits for s in steps), 2),
            failed=sum(1 for s in steps if s.status in ("failed", "skipped"))),
        steps=tuple(steps))


def _natural(variant: str) -> tuple[tuple[tuple[int, str], ...], str]:
    """``size=9`` before ``size=10``: runs of digits compared as numbers (by length without
    leading zeros, then digit by digit), the text between them as text, then the id itself."""
    parts = _DIGITS.split(variant)  # text, digits, text, …: the kinds line up between ids
    return (tuple((0, part) if number % 2 == 0 else (len(part.lstrip("0")), part.lstrip("0"))
                  for number, part in enumerate(parts)), variant)


def _rebased(images: tuple[SourceImage, ...] | None, base: Path,
             into: Path) -> tuple[SourceImage, ...] | None:
    if images is None:
        return None
    return tuple(replace(image, path=_rebase(image.path, base, into))
                 if image.source == "input" and image.path is not None else image
                 for image in images)


def _rebase(path: str, base: Path, into: Path) -> str:
    """A recipe input's ``path`` (relative to the shard's folder ``base``) made relative to
    ``into``, when the file is there to be named; else as it is: the shard ran on another
    machine (a CI job), in a folder that ``into`` stands for."""
    if os.path.isabs(path):
        return path
    named = os.path.normpath(base / path)
    if not os.path.exists(named):
        return path
    try:
        return os.path.relpath(named, os.path.abspath(into)).replace(os.sep, "/")
    except ValueError:  # Windows: another drive
        return named
