"""What a plan is and costs, for people (text) and for machines (JSON); the run's summaries and
the report word costs with the same functions."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kontext_pipeline.plan._locked import CheckResult
from kontext_pipeline.plan._plan import Plan, Task
from kontext_pipeline.plan._resolution import Resolved, cost_of_misses
from kontext_pipeline.recipe._models import MODELS

__all__ = ["cost", "credits_text", "dollars", "estimated", "lock_diff", "number", "paid",
           "plan_json", "plan_text", "task_json"]

_KEY_CHARS = 12


def dollars(credits: float) -> str:
    """Credits as dollars: 1 credit is $0.01; ``$0.08``, and for fractional credits (to the
    hundredth, as :func:`number` shows them) to the hundredth of a cent: ``$0.0865``."""
    hundredths = round(credits, 2)
    if float(hundredths).is_integer():
        return f"${hundredths / 100:.2f}"
    return "$" + f"{hundredths / 100:.4f}".rstrip("0")


def number(credits: float) -> str:
    """Credits to the hundredth, without trailing zeros: ``4``, ``12.5``, ``3.04``."""
    return f"{round(credits, 2):.2f}".rstrip("0").rstrip(".")


def credits_text(credits: float, *, money: bool = True, estimate: bool = False) -> str:
    """``1 credit ($0.01)``, ``12.35 credits ($0.1235)``; without ``money``, no dollars; an
    ``estimate`` labelled so: ``~12.35 credits ($0.1235, estimate)``,
    ``~12.35 credits (estimate)``."""
    text = f"{'~' if estimate else ''}{number(credits)} credit{'' if credits == 1 else 's'}"
    label = ", estimate" if estimate else ""
    if money:
        return f"{text} ({dollars(credits)}{label})"
    return f"{text} (estimate)" if estimate else text


def estimated(tasks: Iterable[Task]) -> bool:
    """Whether the price of ``tasks`` together is an estimate: any of them is priced per
    megapixel (the API's charge then depends on sizes it alone knows for sure)."""
    return any(not MODELS[task.model].price.per_image for task in tasks)


def paid(provider: str) -> bool:
    """Whether ``provider``'s results are paid for (the preview provider's cost nothing)."""
    return provider == "bfl"


def cost(credits: float, provider: str, *, money: bool = True, estimate: bool = False) -> str:
    """What ``credits`` cost on ``provider``: :func:`credits_text`, or for the preview provider
    ``free (would cost 12 credits ($0.12) on BFL)`` (just ``free`` for nothing)."""
    text = credits_text(credits, money=money, estimate=estimate)
    if paid(provider):
        return text
    return f"free (would cost {text} on BFL)" if credits else "free"


def _images(task: Task) -> str:
    if not task.images:
        return "text-to-image"
    return "image " + ", ".join(image.name for image in task.images)


_SOURCES = {"cache": "cached", "files": "from its exported file", "lock": "held by the lock",
            "shared": "in the shared cache"}
_COUNTED = {"files": "from exported files", "lock": "held by the lock",
            "shared": "in the shared cache"}


def _status(resolved: Resolved) -> str:
    if resolved.key is None:
        return f"miss (after {resolved.waits_on})  {_estimate(resolved.task)}"
    key = resolved.key[:_KEY_CHARS]
    if resolved.hit:
        return f"{_SOURCES[resolved.source or 'cache']}  key {key}"
    return f"miss  key {key}  {_estimate(resolved.task)}"


def _estimate(task: Task) -> str:
    """``4 credits``, or for a model priced per megapixel ``~12.35 credits (estimate)``."""
    return credits_text(task.credits, money=False, estimate=estimated([task]))


def _lock_status(check: CheckResult, task: Task) -> tuple[str, str | None]:
    """How the lock stands on ``task``: ``agrees``, ``changed`` (and how) or ``none``; a locked
    file that is not as recorded is named after it."""
    mine = [d for d in check.differences if (d.variant, d.step) == (task.variant, task.step)]
    if any(d.kind == "no lock" for d in check.differences) or any(d.kind == "new" for d in mine):
        return "none", None
    step = next((d.reason for d in mine if d.kind == "changed"), None)
    said = [step] if step is not None else []
    said += [d.reason for d in mine if d.path is not None or d.kind == "unexported"]
    return ("changed" if step is not None else "agrees"), "; ".join(said) or None


def _lock_line(check: CheckResult, task: Task) -> str:
    state, said = _lock_status(check, task)
    if said is None:
        return state
    return said if state == "changed" else f"{state}; {said}"


def lock_diff(check: CheckResult,
              resolved: Sequence[Resolved] = ()) -> dict[str, list[str]]:
    """The records a run of the plan would add to the lock, change and remove (``variant /
    step`` each), if every step finishes. A record changes when its request does, when an
    output is to be exported under a new name, and (given ``resolved``, what the cache and the
    lock hold) when its step is made again, or is held by the lock while some of its files
    are not as recorded (they leave the record)."""
    def steps(*kinds: str) -> list[str]:
        return list(dict.fromkeys(f"{d.variant} / {d.step}" for d in check.differences
                                  if d.kind in kinds))

    changed = steps("changed", "unexported")
    if not any(d.kind == "no lock" for d in check.differences):
        new = {(d.variant, d.step) for d in check.differences if d.kind == "new"}
        files = {(d.variant, d.step) for d in check.differences if d.path is not None}
        again = [f"{r.task.variant} / {r.task.step}" for r in resolved
                 if (r.task.variant, r.task.step) not in new
                 and (not r.hit or (r.source == "lock"
                                    and (r.task.variant, r.task.step) in files))]
        order = {f"{r.task.variant} / {r.task.step}": i for i, r in enumerate(resolved)}
        changed = sorted(dict.fromkeys([*changed, *again]),
                         key=lambda step: order.get(step, len(order)))
    return {"added": steps("new"), "changed": changed, "removed": steps("gone")}


def _lock_footer(check: CheckResult, tasks: int,
                 resolved: Sequence[Resolved]) -> list[str]:
    if any(d.kind == "no lock" for d in check.differences):
        return [f"lock {check.lock}: none yet; a run writes it ({tasks} step"
                f"{'' if tasks == 1 else 's'})"]
    diff = lock_diff(check, resolved)
    renamed = [d.reason for d in check.differences if d.kind == "renamed"]
    if not renamed and not any(diff.values()):
        return [f"lock {check.lock}: a run leaves it as it is"]
    counts = ", ".join(f"{verb} {len(diff[kind])}" for kind, verb in
                       (("added", "adds"), ("changed", "changes"), ("removed", "removes")))
    lines = [f"lock {check.lock}: a run {counts} step records"]
    lines.extend(f"  {line}" for line in renamed)
    for kind, mark in (("added", "+"), ("changed", "~"), ("removed", "-")):
        lines.extend(f"  {mark} {step}" for step in diff[kind])
    return lines


def _params(task: Task) -> str:
    params = task.params
    parts = [params.output_format, f"tolerance {params.safety_tolerance}"]
    if params.aspect_ratio:
        parts.insert(0, params.aspect_ratio)
    if params.prompt_upsampling:
        parts.append("upsampling")
    return " · ".join(parts)


def plan_text(plan: Plan, resolved: Sequence[Resolved],
              reasons: Mapping[str, str] | None = None, lock: CheckResult | None = None) -> str:
    """The plan as ``kontext-pipeline plan`` prints it, with each task's cache status (and,
    for a task that will run, ``reasons[task.id]``: why); with the recipe's ``lock`` checked
    (:func:`~kontext_pipeline.plan._locked.check_plan`), whether it agrees with each task, and
    what a run would change in it."""
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
            if lock is not None:
                lines.append(f"       lock: {_lock_line(lock, task)}")
    cached = sum(1 for r in resolved if r.hit)
    price = cost(cost_of_misses(resolved), plan.provider,
                 estimate=estimated(r.task for r in resolved if not r.hit))
    from_lock = [f"{n} {said}" for source, said in _COUNTED.items()
                 if (n := sum(1 for r in resolved if r.source == source))]
    held = f" ({', '.join(from_lock)})" if from_lock else ""
    lines.append("")
    lines.append(f"{cached} of {tasks} cached{held}; the rest "
                 f"{'cost' if paid(plan.provider) else 'are'} {price}")
    if lock is not None:
        lines.extend(_lock_footer(lock, tasks, resolved))
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
              reasons: Mapping[str, str] | None = None, lock: CheckResult | None = None) -> str:
    """The plan as ``kontext-pipeline plan --json`` prints it (``why`` and ``lock``: see
    :func:`plan_text`; ``lock`` is null for a plan that uses none, the preview provider's)."""
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
                   "source": status[task.id].source,
                   "why": (reasons or {}).get(task.id),
                   "lock": None if lock is None else _lock_json(lock, task)}
                  for task in plan.tasks],
        "totals": {"tasks": len(plan.tasks), "credits": plan.credits,
                   "cached": sum(1 for r in resolved if r.hit),
                   "credits_to_spend": cost_of_misses(resolved)},
        "lock": None if lock is None else {
            "file": lock.lock,
            "exists": not any(d.kind == "no lock" for d in lock.differences),
            **lock_diff(lock, resolved),
            "renamed": next((d.reason for d in lock.differences if d.kind == "renamed"), None)},
    }
    return json.dumps(document, indent=2, ensure_ascii=False)


def _lock_json(check: CheckResult, task: Task) -> dict[str, Any]:
    state, said = _lock_status(check, task)
    return {"status": state, "detail": said}
