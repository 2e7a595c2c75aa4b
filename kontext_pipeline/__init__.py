"""kontext-pipeline: declarative, cached, reproducible FLUX.1 Kontext edit recipes.

The library behind the ``kontext-pipeline`` command::

    from kontext_pipeline import build_plan, load_spec

    spec = load_spec("pipelines/poster-chain.yaml")
    plan = build_plan(spec, overrides={"color": "blue"})
"""

from kontext_pipeline.diagnostics import Problem
from kontext_pipeline.errors import KontextError, SpecError, TemplateError, UsageError
from kontext_pipeline.plan import Plan, Task, build_plan
from kontext_pipeline.spec import Spec, Step, load_spec

__all__ = [
    "KontextError",
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
]
