"""The Python API: run a recipe as ``kontext-pipeline run`` does, and get its result back.

The keyword arguments mirror the command line's options. An invalid recipe, a bad argument, a
missing or refused key, a ``frozen`` cache miss or a budget exceeded raises a
:class:`~kontext_pipeline.errors.KontextError` subclass; a step that fails does not raise: the
result says so (``ok`` is false, ``failures`` says why), as the command's exit code 1 does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import os
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from kontext_pipeline.errors import UsageError

if TYPE_CHECKING:
    from kontext_pipeline.outputs._manifest import Manifest
    from kontext_pipeline.runner._pipelines import PipelineReport

__all__ = ["Failure", "RunResult", "VarValue", "arun", "run"]

_LOG = logging.getLogger("kontext_pipeline")

VarValue = str | int | float | bool
"""A value of ``vars``: text as is, numbers and booleans as the recipe's YAML writes them."""

MAX_CONCURRENCY = 24


@dataclass(frozen=True)
class Failure:
    """A step that did not finish: ``failed`` (with the API's or the check's reason), or
    ``skipped`` because a step it reads from failed."""

    variant: str
    step: str
    status: Literal["failed", "skipped"]
    reason: str

    def __str__(self) -> str:
        return f"{self.variant} / {self.step}: {self.reason}"


@dataclass(frozen=True)
class RunResult:
    """One recipe's run: ``ok`` when every step finished; ``failures`` otherwise; ``outputs``
    maps each exported file's name in the manifest (``color=red/poster.png``) to its path;
    ``manifest`` is ``manifest.json`` as typed records (``result.manifest.steps[0].cache``)."""

    out_dir: Path
    manifest: Manifest
    failures: tuple[Failure, ...]
    outputs: Mapping[str, Path]

    @property
    def ok(self) -> bool:
        return not self.failures


def run(
    recipe: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    vars: Mapping[str, VarValue] | None = None,
    provider: str = "bfl",
    api_base: str | None = None,
    api_key: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    concurrency: int | None = None,
    frozen: bool = False,
    max_credits: float | None = None,
    lock: bool = True,
    shared_cache: str | None = None,
    shared_cache_readonly: bool | None = None,
    shard: str | None = None,
) -> RunResult:
    """Run ``recipe`` and export its outputs into ``out`` (default ``out/<recipe name>``).

    ``vars`` sets recipe variables and selects matrix variants (``--var``); ``provider`` is
    ``bfl`` (the key from ``api_key`` or ``BFL_API_KEY``) or ``preview`` (offline);
    ``cache_dir`` defaults to ``KONTEXT_CACHE_DIR``, else the user cache directory;
    ``concurrency`` (1 to 24, default 24) bounds the tasks active at once; ``frozen`` calls no
    provider (every step must be cached, or held by the lock); ``max_credits`` refuses a run
    that would cost more; ``lock`` (a ``bfl`` run) reads the recipe's lock and writes it again
    (``False``: neither, as ``--no-lock``); ``shared_cache`` (default ``KONTEXT_SHARED_CACHE``)
    is a cache on object storage behind the local one (``s3://BUCKET/PREFIX``), only read when
    ``shared_cache_readonly`` (default ``KONTEXT_SHARED_CACHE_READONLY``); ``shard``
    (``"2/4"``) runs that share of the variants. What the run warns of (the shared cache
    failing, an old output kept) goes to the ``kontext_pipeline`` logger.
    Inside a running event loop (a notebook), the run goes on in a thread of its own, which an
    interrupt does not stop before the run ends; there, ``await arun(...)`` is the better
    call."""
    work = arun(recipe, out=out, vars=vars, provider=provider, api_base=api_base,
                api_key=api_key, cache_dir=cache_dir, concurrency=concurrency, frozen=frozen,
                max_credits=max_credits, lock=lock, shared_cache=shared_cache,
                shared_cache_readonly=shared_cache_readonly, shard=shard)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(work)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kontext-run") as pool:
        return pool.submit(asyncio.run, work).result()


async def arun(
    recipe: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    vars: Mapping[str, VarValue] | None = None,
    provider: str = "bfl",
    api_base: str | None = None,
    api_key: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    concurrency: int | None = None,
    frozen: bool = False,
    max_credits: float | None = None,
    lock: bool = True,
    shared_cache: str | None = None,
    shared_cache_readonly: bool | None = None,
    shard: str | None = None,
) -> RunResult:
    """:func:`run`, awaited in the caller's event loop (notebooks, servers): reading the recipe
    and planning it (which hashes the input images), or recalling the plan from the memo of a
    recipe validated before (:mod:`~kontext_pipeline.plan._memo`), happen in a worker thread."""
    from kontext_pipeline.plan._memo import plan_recipes  # noqa: PLC0415  (import stays light)
    from kontext_pipeline.plan._plan import var_overrides  # noqa: PLC0415
    from kontext_pipeline.plan._shards import parse_shard, shard_plans  # noqa: PLC0415
    from kontext_pipeline.runner._pipelines import run_plans  # noqa: PLC0415
    from kontext_pipeline.runner._providers import PROVIDERS, open_provider  # noqa: PLC0415
    from kontext_pipeline.store._cache import Cache, default_cache_dir  # noqa: PLC0415
    from kontext_pipeline.store._shared import SharedCache  # noqa: PLC0415

    if provider not in PROVIDERS:
        raise UsageError(f"unknown provider '{provider}'; choose one of: {', '.join(PROVIDERS)}")
    slots = _concurrency(concurrency)
    _check_budget(max_credits)
    environ = dict(os.environ)
    if api_key is not None:
        environ["BFL_API_KEY"] = api_key
    overrides = var_overrides(vars)
    share = parse_shard(shard) if shard is not None else None
    url = shared_cache if shared_cache is not None else environ.get("KONTEXT_SHARED_CACHE")
    readonly = (shared_cache_readonly if shared_cache_readonly is not None
                else _truthy(environ.get("KONTEXT_SHARED_CACHE_READONLY", "")))
    shared = (SharedCache.open(url, environ, readonly=readonly, on_warning=_LOG.warning)
              if url else None)
    (planned,) = await asyncio.to_thread(plan_recipes, [recipe], overrides=overrides,
                                         environ=environ, provider=provider)
    (plan,) = shard_plans([planned], share)
    out_dir = Path(out) if out is not None else Path("out") / planned.spec.name
    cache = Cache(Path(cache_dir) if cache_dir is not None else default_cache_dir(environ))
    (report,) = await run_plans(
        [plan], cache=cache, out_dirs=[out_dir], frozen=frozen, max_credits=max_credits,
        lock=lock, shared=shared, shard=share, on_note=_LOG.warning,
        open_provider=lambda: open_provider(provider, environ=environ, api_base=api_base,
                                            concurrency=slots))
    return _result(report)


def _truthy(text: str) -> bool:
    """An environment variable's flag as click reads one (``1``, ``true``, ``yes``, ``on``)."""
    return text.strip().lower() in {"1", "true", "yes", "y", "on", "t"}


def _concurrency(value: int | None) -> int:
    if value is None:
        return MAX_CONCURRENCY
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CONCURRENCY:
        raise UsageError(f"concurrency must be a whole number from 1 to {MAX_CONCURRENCY}; "
                         f"got {value!r}")
    return value


def _check_budget(value: float | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                              or not math.isfinite(value) or value < 0):
        raise UsageError(f"max_credits must be a number of credits (a fraction too), 0 or "
                         f"more; got {value!r}")


def _result(report: PipelineReport) -> RunResult:
    failures = []
    for record in report.records:
        if record.status == "failed" or record.status == "skipped":  # noqa: PLR1714  (narrows)
            reason = (record.error or "").removeprefix(f"{record.task.id}: ")
            failures.append(Failure(record.task.variant, record.task.step, record.status,
                                    reason))
    outputs = {step.output: report.out_dir / step.output
               for step in report.manifest.steps if step.output is not None}
    return RunResult(report.out_dir, report.manifest, tuple(failures),
                     types.MappingProxyType(outputs))
