"""The work templates may do: in one render, and in every render of one recipe together.

One render may run :data:`MAX_STEPS` loop iterations, calls and filters, do :data:`MAX_WORK`
units of work and write :data:`._sandbox_sizes.MAX_VALUE` characters. A unit of
work is about what copying one character costs: an operation is charged the characters and
items it builds, reads or writes, measuring a value and running the template's code cost more
(:mod:`kontext_pipeline.recipe._sandbox` says how much), and so does each step and each render.
Validation renders every step for every variant, and a plan renders them again: a
:class:`RecipeBudget` is shared by all the renders of one recipe, so a recipe whose every render
stays within bounds still cannot add up to hours. Every refusal is a
:class:`jinja2.exceptions.SecurityError`; running out of the recipe's budget is a
:class:`BudgetExhaustedError`, after which no render of the recipe starts.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from jinja2.exceptions import SecurityError

from kontext_pipeline.recipe._sandbox_sizes import MAX_VALUE

__all__ = ["MAX_STEPS", "MAX_WORK", "RECIPE_SECONDS", "RECIPE_STEPS", "RECIPE_WORK",
           "BudgetExhaustedError", "RecipeBudget", "budget", "charge", "step", "write"]

MAX_STEPS = 10_000
"""Loop iterations, calls and filters in one render."""

MAX_WORK = 10_000_000
"""Units of work in one render (about a tenth of a second)."""

RECIPE_STEPS = 5_000_000
"""Loop iterations, calls and filters in all the renders of one recipe."""

RECIPE_WORK = 500_000_000
"""Units of work in all the renders of one recipe (a few seconds: the largest recipe, 256
variants of 100 steps with ordinary prompts, takes about 60% of it)."""

STEP_COST = 100
"""Units of work charged for each loop iteration, call or filter."""

RENDER_COST = 5_000
"""Units of work charged for each render, however small its template."""

RECIPE_SECONDS = 30.0
"""Seconds that all the renders of one recipe may take: a last resort behind the counts."""

_SIMPLER = "use fewer variants or simpler templates"


class BudgetExhaustedError(SecurityError):
    """The renders of one recipe together did more than its :class:`RecipeBudget` allows."""


class RecipeBudget:
    """What all the renders of one recipe may do together. Not thread-safe: one recipe is
    rendered by one thread."""

    def __init__(self, *, steps: int = RECIPE_STEPS, work: int = RECIPE_WORK,
                 seconds: float = RECIPE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_steps, self.max_work, self.seconds = steps, work, seconds
        self.steps = 0
        self.work = 0
        self.spent: str | None = None
        self._clock = clock
        self._deadline: float | None = None

    def start(self) -> None:
        """Start the clock at the first render; refuse when the budget is already spent."""
        if self._deadline is None:
            self._deadline = self._clock() + self.seconds
        self.check()

    def check(self) -> None:
        if self.spent is None:
            if self.steps > self.max_steps:
                self.spent = (f"the recipe's templates run more than {self.max_steps} loop "
                              "iterations, calls and filters in all (every step of every "
                              f"variant); {_SIMPLER}")
            elif self.work > self.max_work:
                self.spent = (f"the recipe's templates do more than {self.max_work} units of "
                              f"work in all (every step of every variant); {_SIMPLER}")
            elif self._deadline is not None and self._clock() > self._deadline:
                self.spent = (f"the recipe's templates take more than {self.seconds:g} seconds "
                              f"to render (every step of every variant); {_SIMPLER}")
        if self.spent is not None:
            raise BudgetExhaustedError(self.spent)


@dataclass
class _Render:
    recipe: RecipeBudget = field(default_factory=RecipeBudget)
    steps: int = 0
    work: int = 0
    written: int = 0


_CURRENT: contextvars.ContextVar[_Render | None] = contextvars.ContextVar(
    "_CURRENT", default=None)


@contextlib.contextmanager
def budget(recipe: RecipeBudget | None = None, *, weight: int = 0) -> Iterator[None]:
    """Count one render (templates are unbounded outside this block) against ``recipe`` (by
    default a budget of its own); ``weight`` is the size of the template, charged up front."""
    render = _Render(recipe or RecipeBudget())
    render.recipe.start()
    token = _CURRENT.set(render)
    try:
        charge(RENDER_COST + weight)
        yield
    finally:
        _CURRENT.reset(token)


def step() -> None:
    """One loop iteration, call or filter."""
    render = _CURRENT.get()
    if render is None:  # compiling, not rendering
        return
    render.steps += 1
    render.recipe.steps += 1
    if render.steps > MAX_STEPS:
        raise SecurityError(f"the template runs more than {MAX_STEPS} loop iterations, calls "
                            "and filters; keep prompt templates simple")
    charge(STEP_COST)


def charge(work: int) -> None:
    """``work`` units: characters and items built, read or written, or template nodes run."""
    render = _CURRENT.get()
    if render is None or work <= 0:
        return
    render.work += work
    render.recipe.work += work
    if render.work > MAX_WORK:
        raise SecurityError(f"the template does more than {MAX_WORK} units of work (characters "
                            "and items built, read or written, and template code run); keep "
                            "prompt templates simple")
    render.recipe.check()


def write(size: int) -> None:
    """``size`` characters written to the prompt."""
    render = _CURRENT.get()
    if render is None:
        return
    render.written += size
    if render.written > MAX_VALUE:
        raise SecurityError(f"the template writes more than {MAX_VALUE} characters")
    charge(size)
