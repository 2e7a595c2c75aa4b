"""The one sandboxed Jinja environment that renders prompt templates.

Templates are user input: they run in Jinja's immutable sandbox (no Python internals, no mutation
of the context), with StrictUndefined (a misspelt variable is an error, never an empty string) and
with the bounds of :mod:`kontext_pipeline.recipe._sandbox` on the memory and time a render may take.
"""

from __future__ import annotations

import functools
import re
import threading
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import jinja2
from jinja2 import meta, nodes
from jinja2.exceptions import SecurityError

from kontext_pipeline.recipe._environ import (
    ENV_PREFIX,
    env_visible,
    is_secret_name,
    template_environ,
)
from kontext_pipeline.recipe._findings import did_you_mean
from kontext_pipeline.recipe._models import resolve_model
from kontext_pipeline.recipe._sandbox import SandboxEnvironment, guard_template, weight
from kontext_pipeline.recipe._sandbox_budget import BudgetExhaustedError, RecipeBudget, budget
from kontext_pipeline.recipe._sandbox_names import FILTERS, TESTS
from kontext_pipeline.recipe._sandbox_sizes import Namespace
from kontext_pipeline.recipe._template import Prompt

__all__ = [
    "CONTEXT_NAMES",
    "ENV_PREFIX",
    "MAX_PROMPT_CHARS",
    "CompiledPrompt",
    "Prompt",
    "RecipeBudget",
    "RenderError",
    "Renderable",
    "StepTemplate",
    "VariantContext",
    "base_context",
    "compilations",
    "env_visible",
    "global_names",
    "is_secret_name",
    "render_steps",
    "template_environ",
]

CONTEXT_NAMES = ("inputs", "steps", "pipeline", "variant", "env")
"""Names the template context always defines; recipe variables may not use them."""

MAX_PROMPT_CHARS = 10_000
"""A rendered prompt longer than this is refused (a guard against runaway templates)."""


@functools.cache
def _environment() -> SandboxEnvironment:
    return SandboxEnvironment()


@dataclass(frozen=True)
class VariantContext:
    """What ``variant`` is in a template: ``variant.id`` and ``variant.values.<key>``."""

    id: str
    values: Mapping[str, Any]


_MAX_MESSAGE = 1000
"""Characters of a render error's message: a template can put a 100,000-character name in
one."""


class RenderError(Exception):
    """A template could not be compiled or rendered. ``line`` is 1-based within the template;
    ``exhausted``: the recipe's render budget is spent, so no later render can succeed."""

    def __init__(self, message: str, line: int | None = None, *,
                 exhausted: bool = False) -> None:
        if len(message) > _MAX_MESSAGE:
            message = f"{message[:_MAX_MESSAGE - 1]}…"
        super().__init__(message)
        self.message = message
        self.line = line
        self.exhausted = exhausted


@dataclass(frozen=True)
class Name:
    """A top-level name a template reads, with the template line that first reads it."""

    name: str
    line: int


class _Compilations:
    """How many templates this process compiled (a diagnostic: see :func:`compilations`)."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self.count += 1


_COMPILATIONS = _Compilations()


def compilations() -> int:
    """How many prompt templates this process has compiled: validation compiles each distinct
    prompt of a recipe once, and the :class:`Spec` and the plan use what it compiled."""
    return _COMPILATIONS.count


class CompiledPrompt:
    """A compiled prompt template (what a :class:`~._template.Prompt` holds)."""

    def __init__(self, source: str) -> None:
        env = _environment()
        self.source = source
        try:
            self._ast = env.parse(source)
            _check_available(self._ast)
            self._template = env.from_string(guard_template(self._ast))
            self._weight = weight(self._ast)
        except jinja2.TemplateSyntaxError as exc:
            unknown = _unknown_name(str(exc.message))
            raise RenderError(unknown or f"template syntax error: {exc.message}",
                              exc.lineno) from exc
        except RecursionError as exc:  # Jinja's parser and compiler recurse per nesting level
            raise RenderError("the template nests too deeply; keep prompt templates simple"
                              ) from exc
        _COMPILATIONS.add()

    def names(self) -> list[Name]:
        """Top-level names the template reads but does not set itself, in source order."""
        free = meta.find_undeclared_variables(self._ast)
        seen: dict[str, Name] = {}
        for node in self._ast.find_all(nodes.Name):
            if node.ctx == "load" and node.name in free and node.name not in seen:
                seen[node.name] = Name(node.name, node.lineno)
        return sorted(seen.values(), key=lambda n: n.line)

    def attributes(self, root: str) -> list[Name]:
        """The ``root.X`` and ``root['X']`` the template reads, as (X, line)."""
        found: list[Name] = []
        for node in self._ast.find_all((nodes.Getattr, nodes.Getitem)):
            target = getattr(node, "node", None)
            if not (isinstance(target, nodes.Name) and target.name == root):
                continue
            if isinstance(node, nodes.Getattr):
                found.append(Name(node.attr, node.lineno))
            elif isinstance(node, nodes.Getitem):
                arg = node.arg
                if isinstance(arg, nodes.Const) and isinstance(arg.value, str):
                    found.append(Name(arg.value, node.lineno))
        return found

    def render(self, context: Mapping[str, Any], recipe: RecipeBudget | None = None) -> str:
        """Render with ``context``, counting the work against ``recipe`` (the budget shared by
        every render of one recipe; by default one of its own). The result is stripped of
        surrounding whitespace."""
        try:
            with budget(recipe, weight=self._weight):
                text = self._template.render(context)
        except BudgetExhaustedError as exc:
            raise RenderError(f"refused by the template sandbox: {exc}", _template_line(exc),
                              exhausted=True) from exc
        except SecurityError as exc:
            raise RenderError(f"refused by the template sandbox: {exc}",
                                _template_line(exc)) from exc
        except jinja2.UndefinedError as exc:
            raise RenderError(_undefined_message(str(exc)), _template_line(exc)) from exc
        except RecursionError as exc:  # a macro calling itself
            raise RenderError("refused by the template sandbox: the template recurses too "
                              "deeply; keep prompt templates simple") from exc
        except jinja2.TemplateRuntimeError as exc:  # a filter or test named at run time
            raise RenderError(_unknown_name(str(exc)) or f"{type(exc).__name__}: {exc}",
                              _template_line(exc)) from exc
        except Exception as exc:  # templates are user code: any failure is the template's
            raise RenderError(f"{type(exc).__name__}: {exc}", _template_line(exc)) from exc
        text = text.strip()
        if len(text) > MAX_PROMPT_CHARS:
            raise RenderError(f"the rendered prompt is {len(text)} characters long; "
                                f"at most {MAX_PROMPT_CHARS} are allowed")
        if not text:
            raise RenderError("the rendered prompt is empty")
        return text


def global_names() -> frozenset[str]:
    """Names Jinja itself defines (``range``, ``namespace``, …)."""
    return frozenset(_environment().globals)


class Renderable(Protocol):
    """A step as the renderer sees it (a :class:`StepTemplate`, or a recipe's ``Step``)."""

    @property
    def id(self) -> str: ...

    @property
    def prompt(self) -> Prompt: ...

    @property
    def seed(self) -> int: ...

    @property
    def model(self) -> str: ...


@dataclass(frozen=True)
class StepTemplate:
    """A step as the renderer sees it, and no more."""

    id: str
    prompt: Prompt
    seed: int
    model: str


def base_context(
    *,
    variables: Mapping[str, Any],
    variant: VariantContext,
    pipeline: Mapping[str, Any],
    inputs: Mapping[str, str],
    env: Mapping[str, str],
) -> dict[str, Any]:
    """The context shared by every step of a variant (``steps`` is added per step).

    Matrix values override the recipe's variables.
    """
    return {
        **variables,
        **variant.values,
        "inputs": dict(inputs),
        "pipeline": dict(pipeline),
        "variant": variant,
        "env": dict(env),
    }


def render_steps(
    steps: Sequence[Renderable], context: Mapping[str, Any], recipe: RecipeBudget | None = None
) -> list[str | RenderError]:
    """Render each step's prompt in order; ``steps.<id>`` shows the earlier steps' results.
    ``recipe`` is the budget shared by every render of the recipe (by default, one for these).

    A failed step is seen by later steps with an empty prompt, so one mistake is reported once.
    When the budget runs out the list ends with that failure: the later steps are not rendered.
    """
    recipe = recipe or RecipeBudget()
    earlier: dict[str, dict[str, Any]] = {}
    results: list[str | RenderError] = []
    for step in steps:
        try:
            text = step.prompt.render({**context, "steps": dict(earlier)}, recipe)
        except RenderError as failure:
            results.append(failure)
            if failure.exhausted:
                break
            text = ""
        else:
            results.append(text)
        earlier[step.id] = {"prompt": text, "seed": step.seed,
                            "model": resolve_model(step.model, context)}
    return results


_UNDEFINED_NAME = re.compile(r"^'(?P<name>[^']+)' is undefined$")
_MISSING_ATTRIBUTE = re.compile(r"^'(?P<owner>[^']+)' has no attribute '(?P<name>[^']+)'$")
_OWNERS = {"dict object": "a mapping", "str object": "text", "list object": "a list",
           "int object": "a number", "float object": "a number",
           f"{Namespace.__module__}.{Namespace.__qualname__} object": "a namespace"}


def _undefined_message(message: str) -> str:
    """Jinja's words for an undefined value, said the way the rest of validation says them."""
    if match := _UNDEFINED_NAME.match(message):
        return f"undefined variable '{match['name']}'"
    if match := _MISSING_ATTRIBUTE.match(message):
        owner = _OWNERS.get(match["owner"], match["owner"])
        return f"{owner} has no attribute or key '{match['name']}'"
    return message


_UNKNOWN_NAME = re.compile(r"^No (?P<kind>filter|test) named '(?P<name>[^']*)'(?: found)?\.$")


def _unknown_name(message: str) -> str | None:
    """:func:`_unavailable` of the name in Jinja's "No filter named …"."""
    match = _UNKNOWN_NAME.match(message)
    return None if match is None else _unavailable(match["kind"], match["name"])


def _check_available(template: nodes.Template) -> None:
    """Refuse the first filter or test the template names that prompts may not use (Jinja would
    let one inside an ``if`` pass until a render reaches it)."""
    for node in template.find_all((nodes.Filter, nodes.Test)):
        kind = "filter" if isinstance(node, nodes.Filter) else "test"
        if node.name not in (FILTERS if kind == "filter" else TESTS):
            raise RenderError(_unavailable(kind, node.name), node.lineno)


def _unavailable(kind: str, name: str) -> str:
    """``unknown filter 'uppr' (did you mean 'upper'?)``; else what can be used instead."""
    env = _environment()
    allowed = sorted(FILTERS if kind == "filter" else TESTS)
    listed = f"use one of: {', '.join(allowed)}"
    if name in (env.jinja_filters if kind == "filter" else env.jinja_tests):
        return f"the {kind} '{name}' is not available in prompt templates; {listed}"
    hint = did_you_mean(name, allowed)
    return f"unknown {kind} '{name}'{hint}" if hint else f"unknown {kind} '{name}'; {listed}"


def _template_line(exc: BaseException) -> int | None:
    """The template line where ``exc`` was raised, from Jinja's rewritten traceback."""
    line = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == "<template>":
            line = lineno
    return line
