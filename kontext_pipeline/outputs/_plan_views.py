"""Rendering results for people (text) and for machines (JSON)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kontext_pipeline.outputs._records import StepRecord
from kontext_pipeline.plan._plan import Plan, Task
from kontext_pipeline.plan._resolution import Resolved, cost_of_misses

if TYPE_CHECKING:
    from kontext_pipeline.outputs._export import Exported

__all__ = ["cost", "credits_text", "dollars", "manifest", "paid", "plan_json", "plan_text",
           "task_json"]

_KEY_CHARS = 12


def dollars(credits: int) -> str:
    """Credits as dollars: 1 credit is $0.01."""
    return f"${credits / 100:.2f}"


def credits_text(credits: int, *, money: bool = True) -> str:
    """``1 credit ($0.01)``, ``12 credits ($0.12)``; without ``money``, no dollars."""
    text = f"{credits} credit{'' if credits == 1 else 's'}"
    return f"{text} ({dollars(credits)})" if money else text


def paid(provider: str) -> bool:
    """Whether ``provider``'s results are paid for (the preview provider's cost nothing)."""
    return provider == "bfl"


def cost(credits: int, provider: str, *, money: bool = True) -> str:
    """What ``credits`` cost on ``provider``: :func:`credits_text`, or for the preview provider
    ``free (would cost 12 credits ($0.12) on BFL)`` (just ``free`` for nothing)."""
    if paid(provider):
        return credits_text(credits, money=money)
    return f"free (would cost {credits_text(credits, money=money)} on BFL)" if credits else "free"


def _images(task: Task) -> str:
    if not task.images:
        return "text-to-image"
    return "image " + ", ".join(image.name for image in task.images)


def _status(resolved: Resolved) -> str:
    if resolved.key is None:
        return f"miss (after {resolved.waits_on})  {resolved.task.credits} credits"
    key = resolved.key[:_KEY_CHARS]
    if resolved.hit:
        return f"cached  key {key}"
    return f"miss  key {key}  {resolved.task.credits} credits"


def _params(task: Task) -> str:
    params = task.params
    parts = [params.output_format, f"tolerance {params.safety_tolerance}"]
    if params.aspect_ratio:
        parts.insert(0, params.aspect_ratio)
    if params.prompt_upsampling:
        parts.append("upsampling")
    return " · ".join(parts)


def plan_text(plan: Plan, resolved: Sequence[Resolved],
              reasons: Mapping[str, str] | None = None) -> str:
    """The plan as ``kontext-pipeline plan`` prints it, with each task's cache status (and,
    for a task that will run, ``reasons[task.id]``: why)."""
    spec = plan.spec
    tasks = len(plan.tasks)
    lines = [
        f"{spec.name} ({spec.file})",
        f"provider {plan.provider} · {len(plan.variants)} variant"
        f"{'' if len(plan.variants) == 1 else 's'} × {len(spec.steps)} step"
        f"{'' if len(spec.steps) == 1 else 's'} = {tasks} task{'' if tasks == 1 else 's'}",
    ]
    width = max(len(step.id) for step in spec.steps)
    status = {r.task.id: r for r in resolved}
    for variant in plan.variants:
        lines.append("")
        lines.append(f"variant {variant.id}")
        for task in plan.tasks_of(variant.id):
            lines.append(f"  {task.index + 1}. {task.step:<{width}}  {task.model}  "
                         f"seed {task.seed:<10}  {_images(task)}  {_params(task)}  "
                         f"{_status(status[task.id])}")
            lines.extend(f"       {line}" for line in task.prompt.splitlines())
            if reasons and task.id in reasons:
                lines.append(f"       why: {reasons[task.id]}")
    cached = sum(1 for r in resolved if r.hit)
    price = cost(cost_of_misses(resolved), plan.provider)
    lines.append("")
    lines.append(f"{cached} of {tasks} cached; the rest "
                 f"{'cost' if paid(plan.provider) else 'are'} {price}")
    return "\n".join(lines)


def _task_fields(task: Task) -> dict[str, Any]:
    """What a task is, as plans and manifests show it."""
    return {
        "variant": task.variant,
        "step": task.step,
        "model": task.model,
        "prompt": task.prompt,
        "seed": task.seed,
        "params": task.params.as_dict(),
    }


def task_json(task: Task) -> dict[str, Any]:
    """One task as the JSON outputs show it."""
    return {
        **_task_fields(task),
        "images": [
            {"name": image.name, "source": "step" if image.is_step else "input",
             "sha256": image.sha256}
            for image in task.images
        ],
        "key": task.static_key,
        "credits": task.credits,
    }


def plan_json(plan: Plan, resolved: Sequence[Resolved],
              reasons: Mapping[str, str] | None = None) -> str:
    """The plan as ``kontext-pipeline plan --json`` prints it (``why``: see :func:`plan_text`)."""
    spec = plan.spec
    status = {r.task.id: r for r in resolved}
    document = {
        "pipeline": spec.name,
        "file": spec.file,
        "spec_sha256": spec.sha256,
        "provider": plan.provider,
        "variables": dict(plan.variables),
        "variants": [{"id": v.id, "values": dict(v.values)} for v in plan.variants],
        "tasks": [{**task_json(task), "key": status[task.id].key,
                   "cache": "hit" if status[task.id].hit else "miss",
                   "why": (reasons or {}).get(task.id)} for task in plan.tasks],
        "totals": {"tasks": len(plan.tasks), "credits": plan.credits,
                   "cached": sum(1 for r in resolved if r.hit),
                   "credits_to_spend": cost_of_misses(resolved)},
    }
    return json.dumps(document, indent=2, ensure_ascii=False)


def manifest(plan: Plan, records: Sequence[StepRecord],
             exported: Mapping[tuple[str, str], Exported], *,
             base: str | None = None) -> dict[str, Any]:
    """``manifest.json``: the contract CI jobs read (see the design). An exported step has its
    ``output`` path and ``output_file_sha256``, the sha256 of that file (provenance inserted),
    beside ``output_sha256``, the image as generated.

    Beyond the design's fields, each step lists the ``images`` it read, in order: ``name``,
    ``source`` (``input`` or ``step``) and, for an input, its file's ``path`` relative to
    ``base`` (the manifest's folder) with ``/`` separators, or absolute without ``base``."""
    import os  # noqa: PLC0415  (here, to keep this addition in one place)

    def images(task: Task) -> list[dict[str, str]]:
        listed = []
        for image in task.images:
            if image.path is None:
                listed.append({"name": image.name, "source": "step"})
                continue
            try:
                path = os.path.relpath(image.path, base) if base is not None else str(image.path)
            except ValueError:  # Windows: the input is on another drive
                path = str(image.path)
            listed.append({"name": image.name, "source": "input",
                           "path": path.replace(os.sep, "/")})
        return listed

    steps = [{**_step_json(record, exported.get((record.task.variant, record.task.step))),
              "images": images(record.task)}
             for record in records]
    return {
        "pipeline": plan.spec.name,
        "spec_sha256": plan.spec.sha256,
        "provider": plan.provider,
        "totals": {
            "steps": len(records),
            "cache_hits": sum(1 for r in records if r.cache == "hit"),
            "calls": sum(1 for r in records if r.cache == "miss" and r.status in ("done",
                                                                                 "failed")),
            "credits": sum(r.credits for r in records),
            "failed": sum(1 for r in records if r.status in ("failed", "skipped")),
        },
        "steps": steps,
    }


def _step_json(record: StepRecord, output: Exported | None) -> dict[str, Any]:
    entry = record.entry
    return {
        **_task_fields(record.task),
        "inputs_sha256": list(record.inputs_sha256),
        "output_sha256": entry.object if entry else None,
        "output": output.path if output else None,
        "output_file_sha256": output.sha256 if output else None,
        "cache": record.cache,
        "request_id": entry.request_id if entry else None,
        "credits": record.credits,
        "duration_s": round(record.duration_s, 3),
        "status": record.status,
        "error": record.error,
    }
