"""kontext-pipeline: declarative, cached, reproducible image-edit recipes for Black Forest Labs'
FLUX.1 Kontext and FLUX.2 API.

The library behind the ``kontext-pipeline`` command::

    import kontext_pipeline as kp

    result = kp.run("pipelines/poster-chain.yaml", out="out/poster", provider="preview")
    print(result.ok, result.outputs, result.manifest.steps[0].cache)

``await kp.arun(...)`` is the same inside a running event loop; :func:`check` says whether a
recipe's lock and the files it lists still match the recipe (no key, no cache). Lower down,
:func:`load_recipe` reads and validates a recipe, :func:`build_plan` turns it into tasks,
:func:`run_plans` runs plans against a provider and a :class:`Cache` (and a
:class:`SharedCache`). Every error raised on purpose is a :class:`KontextError`.

Names are imported on first use, so that ``import kontext_pipeline`` (and the command line's
``--help``) stays fast.
"""

import importlib as _importlib
import typing as _typing

__version__ = "0.1.0"

if _typing.TYPE_CHECKING:
    from kontext_pipeline._support.diagnostics import Problem
    from kontext_pipeline.errors import (
        AmbiguousSubmitError,
        AuthenticationError,
        BudgetExceededError,
        CacheError,
        FrozenCacheMissError,
        InvalidResultError,
        KontextError,
        LockError,
        LockMismatchError,
        ModerationError,
        OutOfCreditsError,
        OutputError,
        ProvenanceError,
        ProviderError,
        ProviderTimeoutError,
        ProviderUnavailableError,
        RefusedToSpendError,
        RequestRejectedError,
        SpecError,
        StepsFailedError,
        TaskFailedError,
        TemplateError,
        UsageError,
    )
    from kontext_pipeline.outputs._manifest import Manifest
    from kontext_pipeline.plan._locked import CheckResult, check
    from kontext_pipeline.plan._plan import Plan, Task, build_plan
    from kontext_pipeline.providers import Provider
    from kontext_pipeline.recipe._spec import Spec, Step
    from kontext_pipeline.recipe._spec import load_spec as load_recipe
    from kontext_pipeline.runner._api import Failure, RunResult, arun, run
    from kontext_pipeline.runner._pipelines import PipelineReport, run_pipelines, run_plans
    from kontext_pipeline.runner._providers import open_provider
    from kontext_pipeline.store._cache import Cache
    from kontext_pipeline.store._shared import SharedCache

_ERRORS = (
    "AmbiguousSubmitError", "AuthenticationError", "BudgetExceededError", "CacheError",
    "FrozenCacheMissError", "InvalidResultError", "KontextError", "LockError",
    "LockMismatchError", "ModerationError",
    "OutOfCreditsError", "OutputError", "ProvenanceError", "ProviderError",
    "ProviderTimeoutError", "ProviderUnavailableError", "RefusedToSpendError",
    "RequestRejectedError", "SpecError", "StepsFailedError", "TaskFailedError", "TemplateError",
    "UsageError",
)

_HOMES: dict[str, tuple[str, str]] = {
    "run": ("runner._api", "run"),
    "arun": ("runner._api", "arun"),
    "RunResult": ("runner._api", "RunResult"),
    "Failure": ("runner._api", "Failure"),
    "Manifest": ("outputs._manifest", "Manifest"),
    "load_recipe": ("recipe._spec", "load_spec"),
    "Spec": ("recipe._spec", "Spec"),
    "Step": ("recipe._spec", "Step"),
    "build_plan": ("plan._plan", "build_plan"),
    "check": ("plan._locked", "check"),
    "CheckResult": ("plan._locked", "CheckResult"),
    "Plan": ("plan._plan", "Plan"),
    "Task": ("plan._plan", "Task"),
    "Cache": ("store._cache", "Cache"),
    "SharedCache": ("store._shared", "SharedCache"),
    "Provider": ("providers", "Provider"),
    "open_provider": ("runner._providers", "open_provider"),
    "run_plans": ("runner._pipelines", "run_plans"),
    "run_pipelines": ("runner._pipelines", "run_pipelines"),
    "PipelineReport": ("runner._pipelines", "PipelineReport"),
    "Problem": ("_support.diagnostics", "Problem"),
    **{name: ("errors", name) for name in _ERRORS},
}

__all__ = [
    "AmbiguousSubmitError",
    "AuthenticationError",
    "BudgetExceededError",
    "Cache",
    "CacheError",
    "CheckResult",
    "Failure",
    "FrozenCacheMissError",
    "InvalidResultError",
    "KontextError",
    "LockError",
    "LockMismatchError",
    "Manifest",
    "ModerationError",
    "OutOfCreditsError",
    "OutputError",
    "PipelineReport",
    "Plan",
    "Problem",
    "ProvenanceError",
    "Provider",
    "ProviderError",
    "ProviderTimeoutError",
    "ProviderUnavailableError",
    "RefusedToSpendError",
    "RequestRejectedError",
    "RunResult",
    "SharedCache",
    "Spec",
    "SpecError",
    "Step",
    "StepsFailedError",
    "Task",
    "TaskFailedError",
    "TemplateError",
    "UsageError",
    "__version__",
    "arun",
    "build_plan",
    "check",
    "load_recipe",
    "open_provider",
    "run",
    "run_pipelines",
    "run_plans",
]


def __getattr__(name: str) -> _typing.Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'kontext_pipeline' has no attribute {name!r}")
    module, attribute = home
    value = getattr(_importlib.import_module(f"kontext_pipeline.{module}"), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*__all__, *(name for name in globals() if name.startswith("__"))})
