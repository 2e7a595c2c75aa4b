"""What a plan is and costs, for people (text) and for machines (JSON); the run's summaries and
the report word costs with the same functions."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from kontext_pipeline.plan._plan import Plan, Task
from kontext_pipeline.plan._resolution import Resolved, cost_of_misses

__all__ = ["cost", "credits_text", "dollars", "paid", "plan_json", "plan_text", "task_json"]

_KEY_CHARS = 12


def dollars(credits: float) -> str:
    """Credits as dollars: 1 credit is $0.01."""
    return f"${credits / 100:.2f}"


def credits_text(credits: float, *, money: bool = True) -> str:
    """``1 credit ($0.01)``, ``12 credits ($0.12)``; without ``money``, no dollars."""
    text = f"{credits} credit{'' if credits == 1 else 's'}"
    return f"{text} ({dollars(credits)})" if money else text


def paid(provider: str) -> bool:
    """Whether ``provider``'s results are paid for (the preview provider's cost nothing)."""
    return provider == "bfl"


def cost(credits: float, provider: str, *, money: bool = True) -> str:
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
