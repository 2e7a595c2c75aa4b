"""Templates have a real work budget: hostile recipes that once took gigabytes or hours are
refused quickly, with a message at the step where the budget ran out (exit 2).

The cases that once took gigabytes or hours run the command line in a subprocess under an
address-space limit and a timeout, so a regression fails the test instead of the machine. The
budgets count work, not time, so every refusal here is the same on any machine: the 30 s bounds
are for a loaded machine, never a race.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kontext_pipeline.recipe._sandbox_budget import RecipeBudget
from kontext_pipeline.recipe._templating import (
    Prompt,
    RenderError,
    StepTemplate,
    VariantContext,
    base_context,
    render_steps,
)

resource = pytest.importorskip("resource")  # the address-space limit is POSIX

ADDRESS_SPACE = 1 << 30  # 1 GiB: the tool needs some 100 MB
CPU_SECONDS = 30  # the refusals take about a second of CPU; "minutes or days" is what they stop
LIMITED = ("import os, resource, sys; "
           "resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1]))); "
           "resource.setrlimit(resource.RLIMIT_CPU, (int(sys.argv[2]), int(sys.argv[2]))); "
           "os.execv(sys.executable, [sys.executable, '-m', 'kontext_pipeline', *sys.argv[3:]])")
SANDBOX = "refused by the template sandbox: "
WORK = ("the template does more than 10000000 units of work (characters and items built, read "
        "or written, and template code run); keep prompt templates simple")
RECIPE_WORK = ("the recipe's templates do more than 500000000 units of work in all (every step of "
               "every variant); use fewer variants or simpler templates")
NESTED = ("a format spec cannot take part of itself from another field (as in '{0:>{1}}'); "
          "write the width as a number (as in '{0:>20}')")
MATRIX = ("matrix:\n  a: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]\n"
          "  b: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]\n")


def recipe(*prompts: str, matrix: str = "") -> str:
    steps = "".join(f"  - id: s{i}\n    prompt: '{p.replace(chr(39), chr(39) * 2)}'\n"
                    for i, p in enumerate(prompts))
    return f"version: 1\nname: hostile\n{matrix}steps:\n{steps}"


def run_limited(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The command line in a fresh interpreter that may map at most 1 GiB and use at most
    :data:`CPU_SECONDS` of CPU time (a bound that a loaded machine does not move: past it, the
    kernel ends the process and the test fails on its exit status)."""
    return subprocess.run([sys.executable, "-c", LIMITED, str(ADDRESS_SPACE), str(CPU_SECONDS),
                           *args],
                          cwd=directory, capture_output=True, text=True, timeout=120,
                          check=False)


def refused(*problems: str) -> str:
    noun = "problem" if len(problems) == 1 else "problems"
    return "".join(f"recipe.yaml:{p}\n" for p in problems) + (
        f"kontext-pipeline: {len(problems)} {noun} in recipe.yaml\n")


DOUBLED = "{% set a = [1] %}" + "{% set a = [a, a] %}" * 40
HEAVY = [
    pytest.param(recipe(DOUBLED + "{{ a | string | length }}"),
                 "5:13: steps[0] (id: s0): prompt: " + SANDBOX + "building a list would make a "
                 "value of more than 100000 characters or items",
                 id="a-list-doubled-forty-times-as-text"),  # 2**40 items once turned into text
    pytest.param(recipe(DOUBLED + "{{ (a ~ '') | length }}"),
                 "5:13: steps[0] (id: s0): prompt: " + SANDBOX + "building a list would make a "
                 "value of more than 100000 characters or items",
                 id="a-list-doubled-forty-times-joined-with-tilde"),
    pytest.param(recipe("{% set ns = namespace(a=[1], b=[1]) %}" + "".join(
        "{% set ns.a = [ns.a, ns.a] %}{% set ns.b = [ns.b, ns.b] %}" for _ in range(40))
        + "{{ ns.a == ns.b }}"),
                 "5:13: steps[0] (id: s0): prompt: " + SANDBOX + WORK,
                 id="comparing-two-lists-doubled-forty-times"),  # once: 2**40 comparisons
    pytest.param(recipe("{% set s = ('x' * 10000) * 5 %}{% set ns = namespace(l=[]) %}"
                        "{% for i in range(5000) %}{% set ns.l = ns.l + [s] %}{% endfor %}"
                        "{{ ns.l | string | length }}"),
                 "5:13: steps[0] (id: s0): prompt: " + SANDBOX + "'+' would make a value of "
                 "100002 characters or items; at most 100000 are allowed",
                 id="a-namespace-gathering-references-to-a-long-text"),  # once: 250 MB of text
    pytest.param(recipe("{{ 'x' | center(99999) }}" * 1600, matrix=MATRIX),
                 "8:13: steps[0] (id: s0): prompt: " + SANDBOX + "the template writes more than "
                 "100000 characters", id="forty-kilobytes-of-filters-folded-while-compiling"),
    pytest.param(recipe("{% set s = 'x ' * 5000 %}{% for i in range(9990) %}"
                        "{% set t = s | wordwrap %}{% endfor %}x"),
                 "5:13: steps[0] (id: s0): prompt: " + SANDBOX + WORK,
                 id="wordwrap-in-a-loop"),  # urlize, no longer allowed, once took 20 minutes
    *(pytest.param(recipe(f"{{{{ {expression} | length }}}}"),
                   "5:13: steps[0] (id: s0): prompt: " + SANDBOX + "'encode' is not available "
                   "in templates: prompts are text, never bytes", id=f"bytes-{name}")
      for name, expression in [  # each once built a gigabyte before it was measured
          ("repeated", "'x'.encode() * 9999"),
          ("centered", "'x'.encode().center(999999999)"),
          ("left-justified", "'x'.encode().ljust(999999999)"),
          ("zero-filled", "'x'.encode().zfill(999999999)"),
          ("printf-formatted", "'%999999999s'.encode() % 'x'.encode()")]),
    *(pytest.param(recipe(f"{{{{ {expression} | length }}}}"),
                   "5:13: steps[0] (id: s0): prompt: " + SANDBOX + NESTED, id=f"nested-{name}")
      for name, expression in [  # widths taken from the arguments, once left unbounded
          ("widths-repeated", "'{0:{1}{1}{1}}'.format('x', 999)"),
          ("width-in-a-list", "'{0[0]:>{0[1]}}'.format(['x', 999999999])"),
          ("width-by-name", "'{a:>{w}}'.format_map({'a': 'x', 'w': 999999999})")]),
]


@pytest.mark.parametrize(("text", "problem"), HEAVY)
def test_a_template_that_once_took_gigabytes_or_hours_is_refused(
        tmp_path: Path, text: str, problem: str) -> None:
    (tmp_path / "recipe.yaml").write_text(text, encoding="utf-8")
    result = run_limited(tmp_path, "validate", "recipe.yaml")
    assert result.returncode == 2
    assert result.stderr == refused(problem)
    assert result.stdout == ""


A_DAY = recipe(
    "{% set s = 'x ' * 5000 %}{% for i in range(9990) %}{% set t = s | wordwrap %}{% endfor %}"
    "{{ a }}",
    "{% set s = ('x ' * 10000) * 5 %}{% for i in range(9990) %}{% set t = s | title %}"
    "{% endfor %}{{ b }}", matrix=MATRIX)


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_a_small_recipe_that_would_render_for_days_is_refused_in_seconds(
        tmp_path: Path, command: str) -> None:
    """Each render once took minutes (9990 times urlize, which wordwrap matches in cost, of
    10,000 characters, or title of 100,000), for 256 variants of two steps: days. Every render
    is now refused at its own budget, and the recipe's budget stops the rendering of the rest
    after 50 renders."""
    (tmp_path / "recipe.yaml").write_text(A_DAY, encoding="utf-8")
    assert len(A_DAY) < 1024
    result = run_limited(tmp_path, command, "recipe.yaml")
    assert result.returncode == 2
    assert result.stderr == refused(
        f"8:13: steps[0] (id: s0): prompt: {SANDBOX}{WORK} (variants a=0,b=0, a=0,b=1, a=0,b=2 "
        "and 22 more)",
        f"10:13: steps[1] (id: s1): prompt: {SANDBOX}{RECIPE_WORK} (variant a=1,b=8)",
        f"10:13: steps[1] (id: s1): prompt: {SANDBOX}{WORK} (variants a=0,b=0, a=0,b=1, a=0,b=2 "
        "and 21 more)")
    assert result.stdout == ""


def test_renders_each_within_bounds_are_refused_together_at_the_step_where_they_run_out(
        tmp_path: Path) -> None:
    """256 variants × 40 steps, each render well within its own budget: together they would
    build 41 GB of text. The budget runs out after 122 renders."""
    step = "{% set s = 'x' * 10000 %}{% for i in range(400) %}{% set t = s ~ 'y' %}{% endfor %}x"
    (tmp_path / "recipe.yaml").write_text(recipe(*[step] * 40, matrix=MATRIX), encoding="utf-8")
    result = run_limited(tmp_path, "validate", "recipe.yaml")
    assert result.returncode == 2
    assert result.stderr == refused(
        f"10:13: steps[1] (id: s1): prompt: {SANDBOX}{RECIPE_WORK} (variant a=0,b=3)")


def one_step(source: str) -> list[StepTemplate]:
    return [StepTemplate("s", Prompt(source), 1, "flux-kontext-pro")]


def context(variant: str = "default") -> dict[str, object]:
    return base_context(variables={}, variant=VariantContext(variant, {}), pipeline={},
                        inputs={}, env={})


def test_the_recipe_budget_is_shared_by_every_render_and_stops_them() -> None:
    budget = RecipeBudget(steps=250)
    steps = one_step("{% for i in range(100) %}{% endfor %}x") * 2
    assert render_steps(steps, context(), budget) == ["x", "x"]
    assert budget.steps == 202  # each loop counts its 100 iterations and the range call
    (failure,) = render_steps(steps, context(), budget)  # the second step is not rendered
    assert isinstance(failure, RenderError)
    assert failure.exhausted
    assert failure.message == (
        SANDBOX + "the recipe's templates run more than 250 loop iterations, calls and filters "
        "in all (every step of every variant); use fewer variants or simpler templates")
    (again,) = render_steps(one_step("x"), context(), budget)  # spent: nothing renders again
    assert isinstance(again, RenderError)
    assert again.message == failure.message


def test_the_recipe_budget_has_a_deadline_behind_the_counts() -> None:
    now = [100.0]
    budget = RecipeBudget(seconds=2, clock=lambda: now[0])
    steps = one_step("{% for i in range(3) %}{% endfor %}x")
    assert render_steps(steps, context(), budget) == ["x"]
    now[0] += 2.5
    (failure,) = render_steps(steps, context(), budget)
    assert isinstance(failure, RenderError)
    assert failure.exhausted
    assert failure.message == (
        SANDBOX + "the recipe's templates take more than 2 seconds to render (every step of "
        "every variant); use fewer variants or simpler templates")


def test_the_largest_ordinary_recipe_stays_well_within_the_budget() -> None:
    """256 variants × 100 steps of an ordinary prompt use about 60% of the recipe's budget."""
    budget = RecipeBudget()
    steps = one_step("Make it {{ words | join(', ') | upper }} {% for w in words %}"
                     "{{ loop.index }} {{ w | title }}{% if not loop.last %}, {% endif %}"
                     "{% endfor %} {{ variant.id }}") * 100
    for number in range(256):
        variables = {"words": ["red", "green", "blue", "cyan", "magenta", "yellow"]}
        results = render_steps(steps, {**context(f"v{number}"), **variables}, budget)
        assert not any(isinstance(r, RenderError) for r in results)
    assert budget.work < 0.7 * budget.max_work
    assert budget.steps < 0.1 * budget.max_steps
