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
    from kontext_pipeline._support.diagnostics import Problem
    from kontext_pipeline.errors import KontextError, SpecError, TemplateError, UsageError
    from kontext_pipeline.plan._plan import Plan, Task, build_plan
    from kontext_pipeline.recipe._spec import Spec, Step, load_spec
    from kontext_pipeline.run._providers import open_provider
    from kontext_pipeline.run._runner import PipelineReport, run_pipelines, run_plans
    from kontext_pipeline.store._cache import Cache

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
    "Cache": "store._cache",
    "Problem": "_support.diagnostics",
    "KontextError": "errors",
    "SpecError": "errors",
    "TemplateError": "errors",
    "UsageError": "errors",
    "Plan": "plan._plan",
    "Task": "plan._plan",
    "build_plan": "plan._plan",
    "open_provider": "run._providers",
    "PipelineReport": "run._runner",
    "run_pipelines": "run._runner",
    "run_plans": "run._runner",
    "Spec": "recipe._spec",
    "Step": "recipe._spec",
    "load_spec": "recipe._spec",
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
