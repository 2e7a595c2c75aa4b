"""Exporting a run's outputs into ``--out``: atomic copies, never outside the directory."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

from kontext_pipeline.cache import Cache
from kontext_pipeline.errors import OutputError
from kontext_pipeline.executor import StepRecord
from kontext_pipeline.files import write_atomic
from kontext_pipeline.plan import Plan

__all__ = ["EXTENSIONS", "export_outputs", "variant_folders"]

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
        if len(name) > _MAX_FOLDER or name in taken:
            digest = hashlib.sha256(variant.id.encode()).hexdigest()[:8]
            name = f"{name[:_MAX_FOLDER]}-{digest}"
        taken.add(name)
        folders[variant.id] = name
    return folders


def _inside(root: Path, relative: str) -> Path:
    target = (root / relative).resolve()
    if not target.is_relative_to(root.resolve()):
        raise OutputError(f"refusing to write {relative!r}: it is outside {root}")
    return target


def export_outputs(plan: Plan, records: Sequence[StepRecord], cache: Cache,
                   out_dir: Path) -> dict[tuple[str, str], str]:
    """Copy each finished output into ``out_dir``; returns (variant, step) -> relative path."""
    folders = variant_folders(plan)
    by_step = {(r.task.variant, r.task.step): r for r in records}
    exported: dict[tuple[str, str], str] = {}
    for variant in plan.variants:
        for name, step in plan.spec.outputs.items():
            record = by_step.get((variant.id, step))
            if record is None or not record.ok or record.entry is None:
                continue
            ext = EXTENSIONS.get(record.entry.format, f".{record.entry.format}")
            relative = "/".join(p for p in (folders[variant.id], f"{name}{ext}") if p)
            try:
                write_atomic(_inside(out_dir, relative),
                             source=cache.object_path(record.entry.object))
            except OSError as exc:
                raise OutputError(f"cannot write {out_dir / relative}: {exc.strerror or exc}"
                                 ) from exc
            exported.setdefault((variant.id, step), relative)
    return exported
