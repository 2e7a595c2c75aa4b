"""The plan: a pure function from a valid recipe (and ``--var`` overrides) to the tasks to run.

Every task has its rendered prompt, its concrete seed, its parameters with defaults explicit and
its input images. Its cache key is known at plan time when every input is a file; a step that
reads an earlier step's output gets its key once that output's bytes exist.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kontext_pipeline._support.diagnostics import Problem
from kontext_pipeline._support.images import INPUT_FORMATS, sha256_file
from kontext_pipeline.errors import TemplateError, UsageError
from kontext_pipeline.recipe._environ import template_environ
from kontext_pipeline.recipe._findings import did_you_mean
from kontext_pipeline.recipe._keys import cache_key, request_document
from kontext_pipeline.recipe._matrix import Variant, format_value
from kontext_pipeline.recipe._models import estimate_credits, output_size, price_megapixels
from kontext_pipeline.recipe._spec import Params, Spec

if TYPE_CHECKING:
    from kontext_pipeline.recipe._prompts import Failure

__all__ = ["ImageSource", "InputSizes", "Plan", "Task", "assemble_plan", "build_plan",
           "var_overrides"]


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
    input_sizes: tuple[tuple[int, int] | None, ...] = ()  # each image's, where the plan knows it

    @property
    def id(self) -> str:
        """``<pipeline>/<variant>/<step>``: unique within one invocation."""
        return f"{self.pipeline}/{self.variant}/{self.step}"

    @property
    def output_size(self) -> tuple[int, int]:
        """The size of the image the request makes (see :func:`~..recipe._models.output_size`),
        from the requested size, else the first input's size where the plan knows it."""
        first = self.input_sizes[0] if self.input_sizes else None
        return output_size(self.model, width=self.params.width, height=self.params.height,
                           aspect_ratio=self.params.aspect_ratio, source=first)

    @property
    def credits(self) -> float:
        """What the request costs when it is not cached, estimated: a Kontext model's price;
        for a model priced per megapixel, the price of :attr:`output_size` and of the input
        images whose size the plan knows. The API's echoed cost is what a run records."""
        return estimate_credits(self.model, price_megapixels(*self.output_size),
                                [price_megapixels(*size) for size in self.input_sizes if size])

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
    def credits(self) -> float:
        """What the run costs if nothing is cached (an estimate for FLUX.2's steps)."""
        return round(sum(task.credits for task in self.tasks), 2)

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
    from kontext_pipeline.recipe._prompts import render_variants  # noqa: PLC0415  (Jinja)

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
    return assemble_plan(spec, provider=provider, variables=variables, variants=variants,
                         prompts=renders.prompts, hashes=hashes, size_of=InputSizes(spec).of)


def assemble_plan(
    spec: Spec,
    *,
    provider: str,
    variables: Mapping[str, Any],
    variants: Sequence[Variant],
    prompts: Mapping[str, Sequence[str]],
    hashes: Mapping[str, str],
    size_of: Callable[[str], tuple[int, int] | None],
) -> Plan:
    """The plan of ``spec`` from what planning found: the ``variables`` and ``variants`` the
    overrides chose, each variant's rendered ``prompts`` (step by step), the sha256 of each input
    a step reads (``hashes``) and each input's size (``size_of``). :func:`build_plan` finds
    them; a plan memo (:mod:`._memo`) holds them, and this one function makes both plans."""
    tasks: list[Task] = []
    for variant in variants:
        made: dict[str, tuple[int, int]] = {}  # each step's output size, in this variant
        for step, prompt in zip(spec.steps, prompts[variant.id], strict=True):
            images = tuple(
                ImageSource(name, spec.inputs[name].path, hashes[name]) if name in spec.inputs
                else ImageSource(name) for name in step.image)
            model = step.models[variant.id]
            task = Task(spec.name, variant.id, step.id, step.index, provider, model, prompt,
                        step.seed, step.params_for(model), images,
                        tuple(made.get(name) or size_of(name) for name in step.image))
            made[step.id] = task.output_size
            tasks.append(task)
    return Plan(spec, provider, variables, tuple(variants), tuple(tasks))


class InputSizes:
    """The recipe inputs' sizes, each read from its header when first asked for (validation
    has read each whole input already); None for a name that is no input, or unreadable."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.known: dict[str, tuple[int, int] | None] = {}

    def of(self, name: str) -> tuple[int, int] | None:
        if name not in self.spec.inputs:
            return None
        if name not in self.known:
            from PIL import Image  # noqa: PLC0415  (Pillow is slow to import)

            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    with Image.open(self.spec.inputs[name].path, formats=INPUT_FORMATS) as image:
                        self.known[name] = image.size
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
                self.known[name] = None  # the estimate goes without it
        return self.known[name]


def var_overrides(values: Mapping[str, str | int | float | bool] | None) -> dict[str, str]:
    """``vars`` as the Python API takes them (text, numbers, booleans) turned into ``--var``
    values: text as is, the others as the recipe's YAML writes them."""
    overrides = {}
    for name, value in (values or {}).items():
        if not isinstance(name, str) or not isinstance(value, str | int | float | bool):
            raise UsageError(f"vars[{name!r}] must be text, a number or a boolean; got "
                             f"{type(value).__name__}")
        overrides[name] = format_value(value)
    return overrides


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
    from kontext_pipeline.recipe._prompts import template_position, variant_list  # noqa: PLC0415

    lines = spec.lines
    problems = []
    for failure, ids in failures.items():
        step = spec.steps[failure.step]
        position = template_position(step.prompt_position, failure.line, lines)
        problems.append(Problem(spec.file, position.line, position.column,
                                f"{step.label}: prompt: {failure.message}"
                                f"{variant_list(ids, total)}"))
    return sorted(problems)
