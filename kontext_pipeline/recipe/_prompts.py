"""Prompt templates in a recipe: compile them, check the names they read, render every variant.

Validation and the plan render through :func:`render_variants`, and resolve a step's model and
seed through :func:`step_model_and_seed`; each distinct template of a recipe is compiled once,
by validation, and the :class:`~kontext_pipeline.recipe._spec.Spec` keeps what it compiled.

Problems are placed at the template's own line in the recipe file where that can be known
exactly (a one-line scalar, or a ``|`` block), else at the start of the prompt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kontext_pipeline.recipe._findings import Findings, did_you_mean
from kontext_pipeline.recipe._keys import derive_seed
from kontext_pipeline.recipe._matrix import Variant
from kontext_pipeline.recipe._models import DEFAULT_MODEL, resolve_model
from kontext_pipeline.recipe._templating import (
    CONTEXT_NAMES,
    ENV_PREFIX,
    Prompt,
    RecipeBudget,
    Renderable,
    RenderError,
    VariantContext,
    base_context,
    env_visible,
    global_names,
    is_secret_name,
    render_steps,
)
from kontext_pipeline.recipe._yamlsource import Position

__all__ = ["PIPELINE_FIELDS", "Failure", "Renders", "check_prompts",
           "env_names", "recipe_model", "recipe_seed", "render_variants", "step_model_and_seed",
           "template_position", "variant_list"]

PIPELINE_FIELDS = ("name", "description", "model", "seed")
_VARIANT_FIELDS = ("id", "values")
_SHOWN_VARIANTS = 3


def recipe_model(data: Mapping[str, Any]) -> str:
    """The recipe's ``model`` as written (:data:`~._models.DEFAULT_MODEL` when it has none, or
    not as text): a model's name, or a template naming a matrix key."""
    model = data.get("model")
    return model if isinstance(model, str) else DEFAULT_MODEL


def recipe_seed(data: Mapping[str, Any]) -> int:
    """The recipe's ``seed`` (0 when it has none, or not as an integer)."""
    seed = data.get("seed")
    return seed if isinstance(seed, int) else 0


def step_model_and_seed(data: Mapping[str, Any], step: Mapping[str, Any]) -> tuple[str, int]:
    """A step's model (as written: see :func:`recipe_model`) and seed: its own, else the
    recipe's model and a seed derived from the recipe's seed and the step's id. A value of the
    wrong type (which the schema reports) counts as none."""
    model, seed = step.get("model"), step.get("seed")
    return (model if isinstance(model, str) else recipe_model(data),
            seed if isinstance(seed, int) else derive_seed(recipe_seed(data), str(step["id"])))


def template_position(start: Position, line: int | None, lines: Sequence[str]) -> Position:
    """The file position of template line ``line`` of a prompt whose value starts at ``start``."""
    if line is None or line < 1:
        return start
    if start.style == "|":
        file_line = start.line + line
        if file_line <= len(lines):
            text = lines[file_line - 1]
            return Position(file_line, len(text) - len(text.lstrip()) + 1)
    return start  # a folded or multi-line flow scalar: its lines do not map one to one


def env_names(data: Mapping[str, Any]) -> tuple[str, ...]:
    """The environment variables the recipe's ``env`` lets its templates see (as written;
    the schema and :func:`._checks.check_env` report what is wrong with them)."""
    names = data.get("env")
    return tuple(n for n in names if isinstance(n, str)) if isinstance(names, list) else ()


def variant_list(ids: Sequence[str], total: int) -> str:
    """`` (variant a=1)`` / `` (variants a=1, a=2 and 3 more)``; empty when all variants fail."""
    if len(ids) == total:
        return ""
    shown = ", ".join(ids[:_SHOWN_VARIANTS])
    more = f" and {len(ids) - _SHOWN_VARIANTS} more" if len(ids) > _SHOWN_VARIANTS else ""
    return f" (variant{'s' if len(ids) > 1 else ''} {shown}{more})"


@dataclass(frozen=True)
class Failure:
    """A step's prompt failing one way: ``step`` is its place among the steps rendered, ``line``
    the template's line; ``exhausted``: the recipe's render budget ran out there."""

    step: int
    message: str
    line: int | None
    exhausted: bool


@dataclass(frozen=True)
class Renders:
    """What rendering steps for variants gave: the prompts of each variant whose every step
    rendered, in the order of the steps, and each failure with the variants it happened to."""

    prompts: Mapping[str, tuple[str, ...]]
    failures: Mapping[Failure, tuple[str, ...]]


def render_variants(
    steps: Sequence[Renderable],
    variants: Sequence[Variant],
    *,
    variables: Mapping[str, Any],
    pipeline: Mapping[str, Any],
    inputs: Mapping[str, str],
    env: Mapping[str, str],
) -> Renders:
    """Render ``steps`` for each variant in turn, every render counted against one budget (the
    variants after the one where it runs out are not rendered). A templated model (in
    ``pipeline`` and in each step) is seen as the variant's model."""
    recipe = RecipeBudget()
    prompts: dict[str, tuple[str, ...]] = {}
    failures: dict[Failure, list[str]] = {}
    for variant in variants:
        if recipe.spent is not None:
            break  # reported once, at the step where it ran out
        model = pipeline.get("model")
        seen = ({**pipeline, "model": resolve_model(model, variant.values)}
                if isinstance(model, str) else pipeline)
        context = base_context(variables=variables,
                               variant=VariantContext(variant.id, variant.values),
                               pipeline=seen, inputs=inputs, env=env)
        results = render_steps(steps, context, recipe)
        texts = tuple(r for r in results if isinstance(r, str))
        if len(texts) == len(steps):
            prompts[variant.id] = texts
        for number, result in enumerate(results):
            if isinstance(result, RenderError):
                failure = Failure(number, result.message, result.line, result.exhausted)
                failures.setdefault(failure, []).append(variant.id)
    return Renders(prompts, {failure: tuple(ids) for failure, ids in failures.items()})


@dataclass
class _StepInfo:
    index: int
    id: str
    prompt: Prompt
    seed: int
    model: str
    usable: bool = True


def check_prompts(
    data: Mapping[str, Any],
    variants: Sequence[Variant] | None,
    env: Mapping[str, str],
    findings: Findings,
    lines: Sequence[str],
) -> dict[int, Prompt]:
    """Compile every prompt, check the names it reads, and render it for every variant
    (when ``variants`` is known), every render counted against one budget. ``env`` is what
    templates see as ``env``. Returns the compiled prompts by step index (one object for
    prompts written alike)."""
    checker = _Checker(data, variants or (), env, findings, lines)
    steps = _compile(data, findings, lines)
    for number, info in enumerate(steps):
        if info is not None:
            earlier = [s.id for s in steps[:number] if s is not None]
            later = {s.id for s in steps[number:] if s is not None}
            checker.check_names(info, earlier, later)
    if variants is not None:
        checker.render_all(variants, steps)
    return {info.index: info.prompt for info in steps if info is not None}


class _Checker:
    def __init__(self, data: Mapping[str, Any], variants: Sequence[Variant],
                 env: Mapping[str, str], findings: Findings, lines: Sequence[str]) -> None:
        self.data, self.env, self.findings, self.lines = data, env, findings, lines
        self.allowed = env_names(data)
        self.variables = _mapping(data.get("vars"))
        self.inputs = _mapping(data.get("inputs"))
        matrix = _mapping(data.get("matrix"))
        includes = matrix.get("include")
        matrix_keys = ({k for v in variants for k in v.values}
                       | {k for k in matrix if k not in ("include", "exclude")}
                       | {k for entry in (includes if isinstance(includes, list) else [])
                          if isinstance(entry, dict) for k in entry})
        self.user_names = set(self.variables) | matrix_keys
        self.known = self.user_names | set(CONTEXT_NAMES) | global_names()
        self.suggested = self.user_names | set(CONTEXT_NAMES)
        self.attributes = (("inputs", list(self.inputs), "an input"),
                           ("pipeline", list(PIPELINE_FIELDS), "a field of pipeline"),
                           ("variant", list(_VARIANT_FIELDS), "a field of variant"))

    def fail(self, info: _StepInfo, message: str, line: int | None) -> None:
        info.usable = False
        _add(self.findings, self.lines, ("steps", info.index, "prompt"), message, line)

    def check_names(self, info: _StepInfo, earlier: Sequence[str], later: set[str]) -> None:
        for name in info.prompt.names():
            if name.name not in self.known:
                self.fail(info, f"undefined variable '{name.name}'"
                                f"{did_you_mean(name.name, self.suggested)}", name.line)
        for ref in info.prompt.attributes("steps"):
            if ref.name in later:
                self.fail(info, f"steps.{ref.name} is this step or a later one; a prompt can "
                                "use only earlier steps", ref.line)
            elif ref.name not in earlier:
                self.fail(info, f"steps.{ref.name} is not a step"
                                f"{did_you_mean(ref.name, earlier)}", ref.line)
        for root, names, what in self.attributes:
            for ref in info.prompt.attributes(root):
                if ref.name not in names:
                    self.fail(info, f"{root}.{ref.name} is not {what}"
                                    f"{did_you_mean(ref.name, names)}", ref.line)
        for ref in info.prompt.attributes("env"):
            if ref.name not in self.env:
                self.fail(info, _env_message(ref.name, self.allowed), ref.line)

    def render_all(self, variants: Sequence[Variant], steps: Sequence[_StepInfo | None]) -> None:
        chain = [s for s in steps if s is not None]
        data = self.data
        pipeline = {"name": data.get("name"), "description": data.get("description", ""),
                    "model": recipe_model(data), "seed": recipe_seed(data)}
        renders = render_variants(chain, variants, variables=self.variables, pipeline=pipeline,
                                  inputs={k: str(v) for k, v in self.inputs.items()},
                                  env=self.env)
        for failure, ids in renders.failures.items():
            info = chain[failure.step]
            if info.usable or failure.exhausted:  # else its own problems are reported
                _add(self.findings, self.lines, ("steps", info.index, "prompt"),
                     failure.message + variant_list(ids, len(variants)), failure.line)


def _env_message(name: str, allowed: Sequence[str]) -> str:
    if is_secret_name(name):
        return f"environment variable '{name}' looks like a secret; templates cannot read secrets"
    if not env_visible(name, allowed):
        return (f"environment variable '{name}' is not visible to templates; list it in the "
                f"recipe's `env` (env: [{name}]) or name it {ENV_PREFIX}{name}")
    return f"environment variable '{name}' is not set"


def _compile(data: Mapping[str, Any], findings: Findings,
             lines: Sequence[str]) -> list[_StepInfo | None]:
    raw_steps = data.get("steps")
    raw_steps = raw_steps if isinstance(raw_steps, list) else []
    compiled: dict[str, Prompt | RenderError] = {}  # each distinct template, once
    steps: list[_StepInfo | None] = []
    for index, step in enumerate(raw_steps):
        if not isinstance(step, dict) or not isinstance(step.get("id"), str):
            steps.append(None)
            continue
        source = step.get("prompt")
        text = source if isinstance(source, str) else "-"
        if text not in compiled:
            try:
                compiled[text] = Prompt(text)
            except RenderError as failure:
                compiled[text] = failure
        prompt = compiled[text]
        if isinstance(prompt, RenderError):
            _add(findings, lines, ("steps", index, "prompt"), prompt.message, prompt.line)
            steps.append(None)
            continue
        model, seed = step_model_and_seed(data, step)
        usable = isinstance(source, str) and not findings.has_errors_under(
            ("steps", index, "prompt"))
        steps.append(_StepInfo(index, step["id"], prompt, seed, model, usable=usable))
    return steps


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _add(findings: Findings, lines: Sequence[str], path: tuple[str | int, ...], message: str,
         line: int | None) -> None:
    start = findings.document.value_position(path)
    findings.add(path, message, position=template_position(start, line, lines))
