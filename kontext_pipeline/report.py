"""Rendering results for people (text) and for machines (JSON)."""

from __future__ import annotations

import json
from typing import Any

from kontext_pipeline.plan import Plan, Task

__all__ = ["dollars", "plan_json", "plan_text"]

_KEY_CHARS = 12


def dollars(credits: int) -> str:
    """Credits as dollars: 1 credit is $0.01."""
    return f"${credits / 100:.2f}"


def _images(task: Task) -> str:
    if not task.images:
        return "text-to-image"
    return "image " + ", ".join(image.name for image in task.images)


def _key(task: Task) -> str:
    key = task.static_key
    if key is not None:
        return f"key {key[:_KEY_CHARS]}"
    waits = ", ".join(image.name for image in task.images if image.is_step)
    return f"key after {waits}"


def _params(task: Task) -> str:
    params = task.params
    parts = [params.output_format, f"tolerance {params.safety_tolerance}"]
    if params.aspect_ratio:
        parts.insert(0, params.aspect_ratio)
    if params.prompt_upsampling:
        parts.append("upsampling")
    return " · ".join(parts)


def plan_text(plan: Plan) -> str:
    """The plan as ``kontext-pipeline plan`` prints it."""
    spec = plan.spec
    tasks = len(plan.tasks)
    lines = [
        f"{spec.name} ({spec.file})",
        f"provider {plan.provider} · {len(plan.variants)} variant"
        f"{'' if len(plan.variants) == 1 else 's'} × {len(spec.steps)} step"
        f"{'' if len(spec.steps) == 1 else 's'} = {tasks} task{'' if tasks == 1 else 's'}",
    ]
    width = max(len(step.id) for step in spec.steps)
    for variant in plan.variants:
        lines.append("")
        lines.append(f"variant {variant.id}")
        for task in plan.tasks_of(variant.id):
            lines.append(f"  {task.index + 1}. {task.step:<{width}}  {task.model}  "
                         f"seed {task.seed:<10}  {_images(task)}  {_params(task)}  {_key(task)}  "
                         f"{task.credits} credits")
            lines.extend(f"       {line}" for line in task.prompt.splitlines())
    lines.append("")
    lines.append(f"cost if nothing is cached: {plan.credits} credits ({dollars(plan.credits)})")
    return "\n".join(lines)


def task_json(task: Task) -> dict[str, Any]:
    """One task as the JSON outputs show it."""
    return {
        "variant": task.variant,
        "step": task.step,
        "model": task.model,
        "prompt": task.prompt,
        "seed": task.seed,
        "params": task.params.as_dict(),
        "images": [
            {"name": image.name, "source": "step" if image.is_step else "input",
             "sha256": image.sha256}
            for image in task.images
        ],
        "key": task.static_key,
        "credits": task.credits,
    }


def plan_json(plan: Plan) -> str:
    """The plan as ``kontext-pipeline plan --json`` prints it."""
    spec = plan.spec
    document = {
        "pipeline": spec.name,
        "file": spec.file,
        "spec_sha256": spec.sha256,
        "provider": plan.provider,
        "variables": dict(plan.variables),
        "variants": [{"id": v.id, "values": dict(v.values)} for v in plan.variants],
        "tasks": [task_json(task) for task in plan.tasks],
        "totals": {"tasks": len(plan.tasks), "credits": plan.credits},
    }
    return json.dumps(document, indent=2, ensure_ascii=False)
