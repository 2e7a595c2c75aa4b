"""The plan: a pure function from a valid recipe (and ``--var`` overrides) to the tasks to run.

Every task has its rendered prompt, its concrete seed, its parameters with defaults explicit and
its input images. Its cache key is known at plan time when every input is a file; a step that
reads an earlier step's output gets its key once that output's bytes exist.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kontext_pipeline._support.diagnostics import Problem
from kontext_pipeline._support.images import sha256_file
from kontext_pipeline.errors import TemplateError, UsageError
from kontext_pipeline.recipe._findings import did_you_mean
from kontext_pipeline.recipe._keys import CREDITS, cache_key, request_document
from kontext_pipeline.recipe._matrix import Variant, format_value
from kontext_pipeline.recipe._prompts import (
    Failure,
    render_variants,
    template_position,
    variant_list,
)
from kontext_pipeline.recipe._spec import Params, Spec
from kontext_pipeline.recipe._templating import template_environ

__all__ = ["ImageSource", "Plan", "Task", "build_plan"]


@dataclass(frozen=True)
class ImageSource:
    """One input image of a task: a recipe input file, or the output of an earlier step."""

    name: str
    path: Path | None = None
    sha256: str | None = None

    @property
    def is_step(self) -> bool:
        return self.path is None


@dataclass(frozen=True)
class Task:
    """One request: a step of one variant, fully rendered."""

    pipeline: str
    variant: str
    step: str
    index: int
    provider: str
    model: str
    prompt: str
    seed: int
    params: Params
    images: tuple[ImageSource, ...]

    @property
    def id(self) -> str:
        """``<pipeline>/<variant>/<step>``: unique within one invocation."""
        return f"{self.pipeline}/{self.variant}/{self.step}"

    @property
    def credits(self) -> int:
        """What the request costs when it is not cached."""
        return CREDITS[self.model]

    def request_document(self, input_sha256: Sequence[str]) -> dict[str, Any]:
        """The canonical document behind the cache key, given the input images' hashes."""
        return request_document(provider=self.provider, model=self.model, prompt=self.prompt,
                                seed=self.seed, input_sha256=input_sha256,
                                params=self.params.as_dict())

    def key(self, input_sha256: Sequence[str]) -> str:
        """The cache key, given the sha256 of each input image in order."""
        if len(input_sha256) != len(self.images):
            raise ValueError(f"{self.id} has {len(self.images)} input images, "
                             f"got {len(input_sha256)} hashes")
        return cache_key(self.request_document(input_sha256))

    @property
    def static_key(self) -> str | None:
        """The cache key when every input is a file (or there is none), else None."""
        hashes = [image.sha256 for image in self.images]
        if any(h is None for h in hashes):
            return None
        return self.key([h for h in hashes if h is not None])


@dataclass(frozen=True)
class Plan:
    """The tasks of one recipe, variant by variant, steps in order."""

    spec: Spec
    provider: str
    variables: Mapping[str, Any]
    variants: tuple[Variant, ...]
    tasks: tuple[Task, ...]

    @property
    def credits(self) -> int:
        """What the run costs if nothing is cached."""
        return sum(task.credits for task in self.tasks)

    def tasks_of(self, variant: str) -> list[Task]:
        return [task for task in self.tasks if task.variant == variant]


def build_plan(
    spec: Spec,
    *,
    overrides: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    provider: str = "bfl",
) -> Plan:
    """Plan ``spec``. ``overrides`` are ``--var`` values: a recipe variable takes the value, a
    matrix key selects the variants with that value. ``env`` is the environment: templates see
    only the variables the recipe allows (:func:`~kontext_pipeline.recipe._templating.env_visible`).
    Raises :class:`UsageError` for an unknown name or a selection that matches no variant,
    :class:`TemplateError` when a prompt fails."""
    overrides = dict(overrides or {})
    variables = _override(spec, overrides)
    variants = _select(spec, overrides)
    hashes = {name: sha256_file(image.path) for name, image in spec.inputs.items()
              if any(name in step.image for step in spec.steps)}
    renders = render_variants(  # the templates validation compiled, rendered as it did
        spec.steps, variants, variables=variables,
        pipeline={"name": spec.name, "description": spec.description, "model": spec.model,
                  "seed": spec.seed},
        inputs={n: i.source for n, i in spec.inputs.items()},
        env=template_environ(env or {}, spec.env_names))
    if renders.failures:
        raise TemplateError(_failure_problems(spec, renders.failures, len(variants)))
    tasks: list[Task] = []
    for variant in variants:
        for step, prompt in zip(spec.steps, renders.prompts[variant.id], strict=True):
            images = tuple(
                ImageSource(name, spec.inputs[name].path, hashes[name]) if name in spec.inputs
                else ImageSource(name) for name in step.image)
            tasks.append(Task(spec.name, variant.id, step.id, step.index, provider, step.model,
                              prompt, step.seed, step.params, images))
    return Plan(spec, provider, variables, tuple(variants), tuple(tasks))


def _override(spec: Spec, overrides: Mapping[str, str]) -> dict[str, Any]:
    variables = dict(spec.variables)
    for name, value in overrides.items():
        if name in spec.matrix_keys:
            continue
        if name not in variables:
            known = [*variables, *spec.matrix_keys]
            raise UsageError(f"--var {name}: {spec.file} has no variable '{name}'"
                             f"{did_you_mean(name, known)}; declare it under `vars`")
        variables[name] = value
    return variables


def _select(spec: Spec, overrides: Mapping[str, str]) -> list[Variant]:
    variants = list(spec.variants)
    for name, value in overrides.items():
        if name not in spec.matrix_keys:
            continue
        chosen = [v for v in variants if name in v.values
                  and format_value(v.values[name]) == value]
        if not chosen:
            offered = sorted({format_value(v.values[name]) for v in spec.variants
                              if name in v.values})
            raise UsageError(f"--var {name}={value} selects no variant of {spec.file}; "
                             f"the matrix has {name} = {', '.join(offered)}")
        variants = chosen
    return variants


def _failure_problems(spec: Spec, failures: Mapping[Failure, Sequence[str]],
                      total: int) -> list[Problem]:
    lines = spec.lines
    problems = []
    for failure, ids in failures.items():
        step = spec.steps[failure.step]
        position = template_position(step.prompt_position, failure.line, lines)
        problems.append(Problem(spec.file, position.line, position.column,
                                f"{step.label}: prompt: {failure.message}"
                                f"{variant_list(ids, total)}"))
    return sorted(problems)
