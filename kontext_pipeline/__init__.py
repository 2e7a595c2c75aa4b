"""kontext-pipeline: declarative, cached, reproducible FLUX.1 Kontext edit recipes.

The library behind the ``kontext-pipeline`` command::

    from kontext_pipeline import build_plan, load_spec

    spec = load_spec("pipelines/poster-chain.yaml")
    plan = build_plan(spec, overrides={"color": "green"}, provider="preview")

Names are imported on first use, so that ``import kontext_pipeline`` (and the command line's
``--help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kontext_pipeline.cache import Cache
    from kontext_pipeline.diagnostics import Problem
    from kontext_pipeline.errors import KontextError, SpecError, TemplateError, UsageError
    from kontext_pipeline.plan import Plan, Task, build_plan
    from kontext_pipeline.providers import open_provider
    from kontext_pipeline.runner import PipelineReport, run_pipelines, run_plans
    from kontext_pipeline.spec import Spec, Step, load_spec

__all__ = [
    "Cache",
    "KontextError",
    "PipelineReport",
    "Plan",
    "Problem",
    "Spec",
    "SpecError",
    "Step",
    "Task",
    "TemplateError",
    "UsageError",
    "build_plan",
    "load_spec",
    "open_provider",
    "run_pipelines",
    "run_plans",
]

_HOMES = {
    "Cache": "cache",
    "Problem": "diagnostics",
    "KontextError": "errors",
    "SpecError": "errors",
    "TemplateError": "errors",
    "UsageError": "errors",
    "Plan": "plan",
    "Task": "plan",
    "build_plan": "plan",
    "open_provider": "providers",
    "PipelineReport": "runner",
    "run_pipelines": "runner",
    "run_plans": "runner",
    "Spec": "spec",
    "Step": "spec",
    "load_spec": "spec",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'kontext_pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"kontext_pipeline.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
