"""Hostile and broken input: every case pins what the user sees (the exact error lines and the
exit code of the command line) and that no traceback escapes.

Recipes, templates, output names, input images and options go through the real command line in
a fresh directory, where every file a case needs is made (big and binary ones are generated,
never committed). The API's answers come from the bundled BFL-compatible server, with the answer
under test scripted over it. Exit codes: 2 invalid recipe or usage, 1 a step failed, 3 refused to
spend.
"""

from __future__ import annotations

import ast
import io
import json
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvicorn
from click.testing import CliRunner, Result
from PIL import Image
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from kontext_pipeline.cli import cli, exit_code
from kontext_pipeline.errors import StepsFailedError
from kontext_pipeline.plan._plan import build_plan
from kontext_pipeline.providers._policies import PollPolicy, RetryPolicy
from kontext_pipeline.providers.bfl import BflProvider, http_client
from kontext_pipeline.recipe._spec import load_spec
from kontext_pipeline.runner._pipelines import run_pipelines
from kontext_pipeline.server._app import create_app
from kontext_pipeline.server._state import ServerConfig, ServerState
from kontext_pipeline.store._cache import Cache
from tests.bfl_helpers import KEY
from tests.conftest import Start

Make = Callable[[Path], None]

EXIT_FAILED, EXIT_INVALID, EXIT_REFUSED = 1, 2, 3


def invoke(*args: str, env: dict[str, str | None] | None = None) -> Result:
    """The command line, in-process, named as the user's shell names it."""
    return CliRunner().invoke(cli, list(args), env=env, prog_name="kontext-pipeline",
                              catch_exceptions=False)


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory (inside ``tmp_path``, so that a case can put files outside
    it), the current directory while the case runs: messages name files as the user does."""
    directory = tmp_path / "work"
    directory.mkdir()
    monkeypatch.chdir(directory)
    return directory


def write(name: str, content: str | bytes) -> Make:
    def make(directory: Path) -> None:
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_bytes(content)

    return make


def refused(*problems: str, file: str = "recipe.yaml") -> str:
    """What stderr holds when a recipe is refused: each problem, then the count."""
    noun = "problem" if len(problems) == 1 else "problems"
    return "".join(f"{p}\n" for p in problems) + (f"kontext-pipeline: {len(problems)} {noun} "
                                                  f"in {file}\n")


def usage(command: str, error: str, arguments: str = "RECIPES...") -> str:
    return (f"Usage: kontext-pipeline {command} [OPTIONS] {arguments}\n"
            f"Try 'kontext-pipeline {command} --help' for help.\n\nError: {error}\n")


def assert_no_traceback(result: Result) -> None:
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


# --- recipes that are not recipes --------------------------------------------------------------

STEPS = "steps:\n  - id: edit\n    prompt: Make it blue\n"
HEAD = "version: 1\nname: hostile\n"


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` × ``height`` pixels: a decompression bomb's
    shape, without its payload."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))


def laughs(levels: int) -> str:
    """The "billion laughs": each anchor is ten aliases of the one before."""
    lines = ['a0: &a0 "lol"']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return HEAD + "vars:\n" + "".join(f"  {line}\n" for line in lines) + STEPS


RECIPES = [
    pytest.param(png_declaring(1, 1), ["recipe.yaml:1:1: the recipe is not UTF-8 text"],
                 id="a-png-image-instead-of-a-recipe"),
    pytest.param("#!/bin/sh\nrm -rf ~/important\n", [
        "recipe.yaml:2:1: the recipe must be a mapping of keys to values, not a single value"],
        id="a-shell-script"),
    pytest.param("{version: 1, name: hostile, steps: [{id: a, prompt: x}]\n", [
        "recipe.yaml:1:1: this '{' is never closed; close it with '}', or put the value in "
        "quotes if the '{' is part of the text"],
        id="json-like-and-unclosed"),
    pytest.param(HEAD + "description: tab\x00null\n" + STEPS, [
        "recipe.yaml:3:17: character U+0000 is not allowed in YAML; remove it"],
        id="a-control-character"),
    pytest.param(HEAD.encode() + b"description: caf\xe9\n" + STEPS.encode(), [
        "recipe.yaml:3:17: the recipe is not UTF-8 text"], id="latin-1"),
    pytest.param((HEAD + STEPS).encode("utf-16"), ["recipe.yaml:1:1: the recipe is not UTF-8 text"],
                 id="utf-16"),
    pytest.param("# padding\n" * 209716 + HEAD + STEPS, [
        "recipe.yaml:1:1: the recipe is 2097230 bytes; recipes are limited to 1048576 bytes"],
        id="larger-than-1-mib"),
    pytest.param(HEAD + "vars:\n  v: " + "[" * 60 + "]" * 60 + "\n" + STEPS, [
        "recipe.yaml:4:55: nesting deeper than 50 levels"], id="nested-60-levels"),
    pytest.param(HEAD + "vars:\n  v: " + "[" * 200_000 + "]" * 200_000 + "\n" + STEPS, [
        "recipe.yaml:1:1: nesting deeper than 50 levels"], id="nested-200000-levels"),
    pytest.param(HEAD + "description: !!python/object/apply:os.system [echo pwned]\n" + STEPS, [
        "recipe.yaml:3:14: YAML tag '!!python/object/apply:os.system' is not allowed in a recipe",
        "recipe.yaml:3:14: description: expected text, got a list"], id="python-tag-on-a-value"),
    pytest.param(HEAD + "steps:\n  - id: edit\n    !!python/name:os.system prompt: x\n", [
        "recipe.yaml:5:5: YAML tag '!!python/name:os.system' is not allowed in a recipe"],
        id="python-tag-on-a-key"),
    pytest.param("--- !!python/object:subprocess.Popen\n" + HEAD + STEPS, [
        "recipe.yaml:1:5: YAML tag '!!python/object:subprocess.Popen' is not allowed in a "
        "recipe"], id="python-tag-on-the-document"),
    pytest.param(HEAD + "description: !vault |\n  $ANSIBLE_VAULT;1.1;AES256\n" + STEPS, [
        "recipe.yaml:3:14: YAML tag '!vault' is not allowed in a recipe"], id="custom-tag"),
    pytest.param("%TAG !e! tag:example.com,2000:\n---\n" + HEAD + "description: !e!x y\n" + STEPS,
                 ["recipe.yaml:5:14: YAML tag 'tag:example.com,2000:x' is not allowed in a "
                  "recipe"], id="tag-directive"),
    pytest.param(laughs(9), [
        "recipe.yaml:4:7: the recipe expands to more than 100000 values (are YAML aliases "
        "repeating a large anchor?)"], id="billion-laughs"),
    pytest.param(HEAD + "vars:\n  v: &v [*v]\n" + STEPS, [
        "recipe.yaml:4:6: nesting deeper than 50 levels"], id="an-alias-inside-itself"),
    pytest.param(HEAD + "a: &a\n  <<: *a\n" + STEPS, [
        "recipe.yaml:3:4: nesting deeper than 50 levels"], id="a-merge-key-of-itself"),
    pytest.param(HEAD + STEPS + "---\n" + HEAD + STEPS, [
        "recipe.yaml:6:1: a recipe holds one YAML document; remove the '---'"],
        id="two-documents"),
    pytest.param("---\n...\n", ["recipe.yaml:1:1: the recipe is empty; start with 'version: 1'"],
                 id="an-empty-document"),
    pytest.param(HEAD + "seed: " + "9" * 5000 + "\n" + STEPS, [
        "recipe.yaml:3:7: a number of 5000 characters is too long; a recipe's numbers have at "
        "most 100"], id="a-5000-digit-number"),
    pytest.param(HEAD + "matrix:\n" + "".join(f"  k{i}: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]\n"
                                              for i in range(10))
                 + "steps:\n  - id: edit\n    prompt: Make it {{ k0 }}\n", [
        "recipe.yaml:4:3: matrix: the matrix's lists make 10000000000 combinations before "
        "`exclude`; at most 65536 are allowed, and at most 256 variants after it: split it into "
        "several recipes"], id="a-matrix-of-ten-billion-variants"),
]


@pytest.mark.parametrize(("content", "problems"), RECIPES)
def test_a_broken_recipe_is_refused_before_anything_runs(work: Path, content: str | bytes,
                                                         problems: list[str]) -> None:
    write("recipe.yaml", content)(work)
    result = invoke("run", "recipe.yaml", "--provider", "preview", "--out", "out",
                    "--cache-dir", "cache")
    assert result.exit_code == EXIT_INVALID
    assert result.stderr == refused(*problems)
    assert result.stdout == ""
    assert not (work / "out").exists()
    assert not (work / "cache").exists()
    assert_no_traceback(result)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_an_endless_recipe_is_read_no_further_than_the_limit() -> None:
    result = invoke("validate", "/dev/zero")
    assert result.exit_code == EXIT_INVALID
    assert result.stderr == refused(
        "/dev/zero:1:1: the recipe is more than 1048576 bytes; recipes are limited to 1048576 "
        "bytes", file="/dev/zero")
    assert_no_traceback(result)


# --- templates ---------------------------------------------------------------------------------

def template_recipe(prompt: str) -> str:
    quoted = prompt.replace("'", "''")
    return f"{HEAD}steps:\n  - id: edit\n    prompt: '{quoted}'\n"


SANDBOX = "recipe.yaml:5:13: steps[0] (id: edit): prompt: refused by the template sandbox: "
TOO_BIG = "would make a value of {} characters or items; at most 100000 are allowed"
WORK = ("the template does more than 10000000 units of work (characters and items built, read "
        "or written, and template code run); keep prompt templates simple")
UNAVAILABLE = ("recipe.yaml:5:13: steps[0] (id: edit): prompt: the filter '{}' is not available "
               "in prompt templates; use one of: abs, capitalize, center, count, d, default, "
               "dictsort, first, float, format, indent, int, items, join, last, length, list, "
               "lower, map, max, min, reject, rejectattr, replace, reverse, round, select, "
               "selectattr, sort, string, sum, title, trim, truncate, unique, upper, wordcount, "
               "wordwrap")

TEMPLATES = [
    pytest.param("{{ ''.__class__.__mro__[1].__subclasses__() }}",
                 SANDBOX + "access to attribute '__class__' of 'str' object is unsafe.",
                 id="class-mro-subclasses"),
    pytest.param("{{ cycler.__init__.__globals__.os.popen('id').read() }}",
                 SANDBOX + "access to attribute '__init__' of 'type' object is unsafe.",
                 id="globals-of-a-builtin"),
    pytest.param("{{ self._TemplateReference__context }}",
                 SANDBOX + "access to attribute '_TemplateReference__context' of "
                           "'TemplateReference' object is unsafe.", id="template-internals"),
    pytest.param("{{ '{0.__class__.__base__}'.format('') }}",
                 SANDBOX + "access to attribute '__class__' of 'str' object is unsafe.",
                 id="attribute-through-str-format"),
    pytest.param("{{ range(10 ** 9) | length }}",
                 "recipe.yaml:5:13: steps[0] (id: edit): prompt: OverflowError: Range too big. "
                 "The sandbox blocks ranges larger than MAX_RANGE (100000).", id="huge-range"),
    pytest.param("{{ ((10 ** 64) ** 64) ** 64 }}",
                 SANDBOX + "'**' would make a number of more than 4300 digits",
                 id="tower-of-powers"),
    pytest.param("{{ (('a' * 10000) * 10000) | length }}",
                 SANDBOX + "repeating a value 10000 times " + TOO_BIG.format(100000000),
                 id="repetition-of-a-repetition"),
    pytest.param("{{ 'x' | center(1000000000) | length }}",
                 SANDBOX + "the filter 'center' " + TOO_BIG.format(1000000000),
                 id="padding-filter"),
    pytest.param("{{ 'x'.ljust(1000000000) | length }}",
                 SANDBOX + "'ljust' " + TOO_BIG.format(1000000000), id="padding-method"),
    pytest.param("{{ ('%1000000000d' % 1) | length }}",
                 SANDBOX + "'%' formatting " + TOO_BIG.format(1000000014),
                 id="printf-width"),
    pytest.param("{{ '{:>1000000000}'.format(1) | length }}",
                 SANDBOX + "'format' " + TOO_BIG.format(1000000016), id="format-width"),
    pytest.param("{{ '{:{}}'.format(1, 1000000000) | length }}",
                 SANDBOX + "a format spec cannot take part of itself from another field (as in "
                 "'{0:>{1}}'); write the width as a number (as in '{0:>20}')",
                 id="nested-format-width"),
    pytest.param("{{ ('x' * 10000) | replace('', 'y' * 10000) | length }}",
                 SANDBOX + "the filter 'replace' " + TOO_BIG.format(100020000),
                 id="replace-between-every-character"),
    pytest.param("{{ ('y' * 10000).join('x' * 10000) | length }}",
                 SANDBOX + "'join' " + TOO_BIG.format(100010000), id="long-separator-join"),
    pytest.param("{{ [1] | batch(1000000000, 'x') | list | length }}",
                 UNAVAILABLE.format("batch"),
                 id="batch-padding"),
    pytest.param("{% set a = 'xxxxxxxxxx' %}" + "{% set a = a ~ a %}" * 40 + "{{ a | length }}",
                 SANDBOX + "joining text with '~' " + TOO_BIG.format(163840),
                 id="doubling-with-tilde"),
    pytest.param("{% set n = 10 ** 60 %}" + "{% set n = n * n %}" * 40 + "{{ n }}",
                 SANDBOX + "'*' would make a number of more than 4300 digits",
                 id="squaring-a-number"),
    pytest.param("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
                 "{% endfor %}x",
                 SANDBOX + "the template runs more than 10000 loop iterations, calls and filters; "
                           "keep prompt templates simple", id="nested-loops"),
    pytest.param("{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
                 "{{ f(40) }}x",
                 SANDBOX + "the template runs more than 10000 loop iterations, calls and filters; "
                           "keep prompt templates simple", id="exponential-macro"),
    pytest.param("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
                 SANDBOX + "the template recurses too deeply; keep prompt templates simple",
                 id="recursive-macro"),
    pytest.param("{% for i in range(9000) %}" + "words " * 20 + "{% endfor %}",
                 SANDBOX + "the template writes more than 100000 characters",
                 id="literal-text-in-a-loop"),
    pytest.param("{% set s = ('x' * 10000) * 10 %}{% set ns = namespace() %}{% set ns.a = s %}"
                 "{% set ns.b = s %}{{ ns | string | length }}",
                 SANDBOX + "the filter 'string' " + TOO_BIG.format(100024),
                 id="a-namespace-of-long-texts-as-text"),
    pytest.param("{% set s = ('x' * 10000) * 10 %}{{ namespace(a=s, b=s) }}",
                 SANDBOX + "'namespace' would make a value of more than 100000 characters or "
                           "items", id="a-namespace-of-long-texts"),
    pytest.param("{{ range(5000) | list | pprint | length }}",
                 UNAVAILABLE.format("pprint"),
                 id="pprint-of-a-long-list"),
    pytest.param("{% set s = ('x' * 10000) * 10 %}{{ s | list | length }}",
                 SANDBOX + "the filter 'list' would make a value of more than 100000 characters "
                           "or items", id="a-long-text-as-a-list"),
    pytest.param("{% set s = ('x' * 10000) * 5 %}{{ ((s | list) + (s | list)) | length }}",
                 SANDBOX + "'+' " + TOO_BIG.format(200000), id="adding-long-lists"),
    pytest.param("{{ range(100000) | join(',') | length }}",
                 SANDBOX + "the filter 'join' " + TOO_BIG.format(800000),
                 id="joining-a-long-range"),
    pytest.param("{{ ('x ' * 5000) | wordwrap(1, true, 'y' * 10000) | length }}",
                 SANDBOX + "the filter 'wordwrap' " + TOO_BIG.format(100020000),
                 id="wordwrap-with-a-long-wrapstring"),
    pytest.param("{{ ('\\n' * 10000) | indent(10000) | length }}",
                 SANDBOX + "the filter 'indent' " + TOO_BIG.format(100020000),
                 id="indenting-many-lines"),
    pytest.param("{{ ('a.co ' * 2000) | urlize(target='x' * 10000) | length }}",
                 UNAVAILABLE.format("urlize"),
                 id="urlize-with-a-long-target"),
    pytest.param("{% set ns = namespace(a=1) %}{% for i in range(200) %}{% set ns.a = [ns.a] %}"
                 "{% endfor %}{{ ns.a | tojson(10000) | length }}",
                 UNAVAILABLE.format("tojson"),
                 id="tojson-of-deep-nesting"),
    pytest.param("{{ {}.fromkeys(range(100000), 'x' * 10000) | length }}",
                 SANDBOX + "'fromkeys' " + TOO_BIG.format(1000200000), id="fromkeys"),
    pytest.param("{{ ([[1]] * 10000) | sum(start=[]) | length }}", SANDBOX + WORK,
                 id="adding-up-lists"),
    pytest.param("{% set s = ('x' * 10000) * 10 %}{% for i in range(9999) %}{% set t = s[::-1] %}"
                 "{% endfor %}x", SANDBOX + WORK, id="slicing-a-long-text-in-a-loop"),
    pytest.param("{% for i in range(9999) %}" + "{% set t = i %}" * 2000 + "{% endfor %}x",
                 SANDBOX + WORK, id="a-long-loop-body"),
    pytest.param("{{ 'x' | center(99999) }}" * 20,
                 SANDBOX + "the template writes more than 100000 characters",
                 id="filters-jinja-would-fold-while-compiling"),
    pytest.param("{{ " + "(" * 500 + "1" + ")" * 500 + " }}",
                 "recipe.yaml:5:13: steps[0] (id: edit): prompt: the template nests too deeply; "
                 "keep prompt templates simple", id="parentheses-500-deep"),
    pytest.param("Sign it {{ env.BFL_API_KEY }}",
                 "recipe.yaml:5:13: steps[0] (id: edit): prompt: environment variable "
                 "'BFL_API_KEY' looks like a secret; templates cannot read secrets",
                 id="secret-by-attribute"),
    pytest.param("Sign it {{ env['DB_PASSPHRASE'] }}",
                 "recipe.yaml:5:13: steps[0] (id: edit): prompt: environment variable "
                 "'DB_PASSPHRASE' looks like a secret; templates cannot read secrets",
                 id="secret-by-key"),
    pytest.param("Sign it {{ env['BFL_' ~ 'API_KEY'] }}",
                 "recipe.yaml:5:13: steps[0] (id: edit): prompt: a mapping has no attribute or "
                 "key 'BFL_API_KEY'", id="secret-by-a-computed-key"),
]


@pytest.mark.parametrize(("prompt", "problem"), TEMPLATES)
def test_a_hostile_template_is_refused_quickly(work: Path, prompt: str, problem: str) -> None:
    write("recipe.yaml", template_recipe(prompt))(work)
    result = invoke("plan", "recipe.yaml", "--cache-dir", "cache",
                    env={"BFL_API_KEY": "bfl_sekrit", "DB_PASSPHRASE": "hunter2"})
    assert result.exit_code == EXIT_INVALID
    assert result.stderr == refused(problem)
    assert result.stdout == ""
    assert_no_traceback(result)


ENVIRONMENT = {"DATABASE_URL": "postgres://app:hunter2@db.internal/prod",
               "CI_JOB_JWT": "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0", "BFL_API_KEY": "bfl_sekrit",
               "BRAND": "acme", "KONTEXT_VAR_SEASON": "spring"}
LEAKS = ("hunter2", "db.internal", "eyJhbGciOiJSUzI1NiJ9", "bfl_sekrit")


def test_env_renders_only_what_the_recipe_allows_and_nothing_else_leaves(
        work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in os.environ:
        if name.startswith("KONTEXT_VAR_"):
            monkeypatch.delenv(name)
    write("recipe.yaml", HEAD + "env: [BRAND]\nsteps:\n  - id: edit\n"
                         "    prompt: 'Env {{ env }}'\n")(work)
    result = invoke("run", "recipe.yaml", "--provider", "preview", "--out", "out",
                    "--cache-dir", "cache", "--json", env=dict(ENVIRONMENT))
    assert result.exit_code == 0
    (prompt,) = [step["prompt"] for step in json.loads(result.stdout)["steps"]]
    assert prompt.startswith("Env {")
    assert ast.literal_eval(prompt.removeprefix("Env ")) == {"BRAND": "acme",
                                                             "KONTEXT_VAR_SEASON": "spring"}
    written = [path for path in [*work.glob("out/**/*"), *work.glob("cache/**/*")]
               if path.is_file()]
    assert {path.name for path in written} >= {"manifest.json", "edit.png", "report.html"}
    with Image.open(work / "out" / "edit.png") as image:
        metadata = " ".join(str(value) for value in image.info.values())
    assert "acme" in metadata  # the prompt is in the image's metadata: the check can fail
    for leak in LEAKS:
        assert leak not in result.stdout
        assert leak not in result.stderr
        assert leak not in metadata
        assert [path for path in written if leak.encode() in path.read_bytes()] == []


def test_a_var_from_the_command_line_is_text_never_a_template(work: Path) -> None:
    write("recipe.yaml", HEAD + "vars:\n  color: blue\n"
                         "steps:\n  - id: edit\n    prompt: Make it {{ color }}\n")(work)
    result = invoke("plan", "recipe.yaml", "--cache-dir", "cache", "--json", "--var",
                    "color={{ env.BFL_API_KEY }}{{ 7 * 7 }}", env={"BFL_API_KEY": "bfl_sekrit"})
    assert result.exit_code == 0
    assert [task["prompt"] for task in json.loads(result.stdout)["tasks"]] == [
        "Make it {{ env.BFL_API_KEY }}{{ 7 * 7 }}"]
    assert "bfl_sekrit" not in result.output


# --- output names ------------------------------------------------------------------------------

NOT_A_FILE_NAME = ("is not a file name of letters, digits, '.', '_' and '-', starting with a "
                   "letter or digit")
DEVICE = ("is the name of a device on Windows (CON, PRN, AUX, NUL, COM0-9, LPT0-9), not a "
          "possible file name; choose another name")

OUTPUT_NAMES = [
    pytest.param("'..'", [f"recipe.yaml:7:3: outputs: '..' {NOT_A_FILE_NAME}"], id="dot-dot"),
    pytest.param("'.'", [f"recipe.yaml:7:3: outputs: '.' {NOT_A_FILE_NAME}"], id="dot"),
    pytest.param("'../../.bashrc'", [f"recipe.yaml:7:3: outputs: '../../.bashrc' "
                                     f"{NOT_A_FILE_NAME}"], id="climbing-out"),
    pytest.param("/etc/cron.d/job", [f"recipe.yaml:7:3: outputs: '/etc/cron.d/job' "
                                     f"{NOT_A_FILE_NAME}"], id="absolute-path"),
    pytest.param("posters/final", [f"recipe.yaml:7:3: outputs: 'posters/final' "
                                   f"{NOT_A_FILE_NAME}"], id="slash"),
    pytest.param("'posters\\final'", [f"recipe.yaml:7:3: outputs: 'posters\\final' "
                                      f"{NOT_A_FILE_NAME}"], id="backslash"),
    pytest.param("C:poster", [f"recipe.yaml:7:3: outputs: 'C:poster' {NOT_A_FILE_NAME}"],
                 id="drive-letter"),
    pytest.param(".hidden", [f"recipe.yaml:7:3: outputs: '.hidden' {NOT_A_FILE_NAME}"],
                 id="hidden-file"),
    pytest.param("CON", [f"recipe.yaml:7:3: outputs: 'CON' {DEVICE}"], id="windows-device"),
    pytest.param("nul.final", [f"recipe.yaml:7:3: outputs: 'nul.final' {DEVICE}"],
                 id="windows-device-with-an-extension"),
    pytest.param("lpt1", [f"recipe.yaml:7:3: outputs: 'lpt1' {DEVICE}"], id="windows-printer"),
]


@pytest.mark.parametrize(("name", "problems"), OUTPUT_NAMES)
def test_an_output_name_that_is_not_a_plain_file_name_is_refused(
        work: Path, name: str, problems: list[str]) -> None:
    write("recipe.yaml", f"{HEAD}{STEPS}outputs:\n  {name}: edit\n")(work)
    result = invoke("validate", "recipe.yaml")
    assert result.exit_code == EXIT_INVALID
    assert result.stderr == refused(*problems)
    assert_no_traceback(result)


def test_outputs_differing_only_in_case_and_a_device_as_recipe_name_are_refused(
        work: Path) -> None:
    write("recipe.yaml", f"version: 1\nname: aux\n{STEPS}outputs:\n  Poster: edit\n"
                         "  poster: edit\n")(work)
    result = invoke("validate", "recipe.yaml")
    assert result.exit_code == EXIT_INVALID
    assert result.stderr == refused(
        f"recipe.yaml:2:7: name: 'aux' {DEVICE}",
        "recipe.yaml:8:3: outputs: 'poster' and 'Poster' differ only in case: on macOS and "
        "Windows they are one file; rename one")
    assert_no_traceback(result)


def test_variants_differing_only_in_case_are_exported_to_different_folders(work: Path) -> None:
    write("recipe.yaml", HEAD + "matrix:\n  color: [Red, red]\n"
                         "steps:\n  - id: edit\n    prompt: Make it {{ color }}\n")(work)
    result = invoke("run", "recipe.yaml", "--provider", "preview", "--out", "out",
                    "--cache-dir", "cache", "--json")
    assert result.exit_code == 0
    outputs = [step["output"] for step in json.loads(result.stdout)["steps"]]
    assert outputs[0] == "color=Red/edit.png"
    assert outputs[1].startswith("color=red-")
    assert len({output.casefold() for output in outputs}) == 2  # two files on macOS, Windows
    assert_no_traceback(result)


# --- input images ------------------------------------------------------------------------------

def image_bytes(size: tuple[int, int] = (64, 48), kind: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 40)).save(out, kind)
    return out.getvalue()


def sparse(name: str, size: int) -> Make:
    """A file of ``size`` bytes that takes no room on disk: a real PNG, then zeros."""

    def make(directory: Path) -> None:
        with (directory / name).open("wb") as handle:
            handle.write(image_bytes())
            handle.truncate(size)

    return make


def outside_link(name: str) -> Make:
    def make(directory: Path) -> None:
        target = directory.parent / "elsewhere" / "secret.png"
        target.parent.mkdir()
        target.write_bytes(image_bytes())
        (directory / name).symlink_to(target)

    return make


def directory_named(name: str) -> Make:
    return lambda directory: (directory / name).mkdir()


def fifo(name: str) -> Make:
    return lambda directory: os.mkfifo(directory / name)


def link_loop(name: str) -> Make:
    return lambda directory: (directory / name).symlink_to(name)


INPUTS = [
    pytest.param("photos", directory_named("photos"),
                 "'photos' is a directory, not an image file", id="a-directory"),
    pytest.param("notes.png", write("notes.png", "shopping list: eggs, milk\n"),
                 "'notes.png' is not an image file that can be decoded", id="text-named-png"),
    pytest.param("empty.png", write("empty.png", b""),
                 "'empty.png' is not an image file that can be decoded", id="an-empty-file"),
    pytest.param("cut.jpg", write("cut.jpg", image_bytes((640, 480), "JPEG")[:3000]),
                 "'cut.jpg' is a damaged or incomplete image (image file is truncated "
                 "(3 bytes not processed))", id="a-truncated-jpeg"),
    pytest.param("bomb.png", write("bomb.png", png_declaring(30000, 30000)),
                 "'bomb.png' declares more than 20 megapixels; the API accepts at most that",
                 id="a-decompression-bomb"),
    pytest.param("wide.png", write("wide.png", png_declaring(6000, 4000)),
                 "'wide.png' is 24.0 megapixels (6000×4000); the API accepts at most 20 "
                 "megapixels", id="too-many-pixels"),
    pytest.param("heavy.png", sparse("heavy.png", 21_000_000),
                 "'heavy.png' is 21.0 MB; the API accepts at most 20 MB", id="over-20-mb"),
    pytest.param("link.png", outside_link("link.png"),
                 "'link.png' leads outside the recipe's directory; keep input images beside the "
                 "recipe or below it", id="a-symlink-out-of-the-tree"),
    pytest.param("../elsewhere/secret.png", outside_link("unused.png"),
                 "'../elsewhere/secret.png' leads outside the recipe's directory; keep input "
                 "images beside the recipe or below it", id="a-path-out-of-the-tree"),
    pytest.param("/etc/passwd", write("unused", ""),
                 "'/etc/passwd' must be a path relative to the recipe file", id="absolute-path"),
    pytest.param("~/photo.png", write("unused", ""),
                 "'~/photo.png' must be a path relative to the recipe file", id="home-path"),
    pytest.param("missing.png", write("unused", ""), "'missing.png' does not exist",
                 id="a-missing-file"),
    pytest.param("loop.png", link_loop("loop.png"),
                 "'loop.png' cannot be read (Too many levels of symbolic links)",
                 id="a-symlink-loop"),
    pytest.param("pipe.png", fifo("pipe.png"),
                 "'pipe.png' is not a regular file (a pipe, a device or a socket); an input must "
                 "be an image file", id="a-fifo",
                 marks=pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")),
]


@pytest.mark.parametrize(("source", "make", "problem"), INPUTS)
def test_an_input_that_is_not_a_usable_image_is_refused(work: Path, source: str, make: Make,
                                                        problem: str) -> None:
    make(work)
    write("recipe.yaml", f"{HEAD}inputs:\n  photo: '{source}'\nsteps:\n  - id: edit\n"
                         "    image: photo\n    prompt: Make it blue\n")(work)
    result = invoke("run", "recipe.yaml", "--provider", "preview", "--out", "out",
                    "--cache-dir", "cache")
    assert result.exit_code == EXIT_INVALID
    assert result.stderr == refused(f"recipe.yaml:4:10: inputs.photo: {problem}")
    assert not (work / "out").exists()
    assert_no_traceback(result)


# --- options -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Option:
    args: tuple[str, ...]
    code: int
    stderr: str
    env: dict[str, str | None] = field(default_factory=dict)


STARTING = "run: 1 step: 0 cached, 1 to run, expected cost 4 credits ($0.04)\n"
NO_KEY = (STARTING + "kontext-pipeline: BFL_API_KEY is not set: the bfl provider needs an API "
                     "key. Set BFL_API_KEY, or run offline with --provider preview\n")

OPTIONS = [
    pytest.param(Option(("run", "--provider", "openai", "recipe.yaml"), EXIT_INVALID, usage(
        "run", "Invalid value for '--provider': 'openai' is not one of 'bfl', 'preview'.")),
        id="unknown-provider"),
    pytest.param(Option(("plan", "--var", "color", "recipe.yaml"), EXIT_INVALID, usage(
        "plan", "Invalid value for --var: 'color' is not NAME=VALUE", "RECIPE")),
        id="var-without-equals"),
    pytest.param(Option(("run", "--var", "=blue", "recipe.yaml"), EXIT_INVALID, usage(
        "run", "Invalid value for --var: '=blue' is not NAME=VALUE")), id="var-without-name"),
    pytest.param(Option(("plan", "--var", "colour=red", "recipe.yaml"), EXIT_INVALID,
                        "kontext-pipeline: --var colour: recipe.yaml has no variable 'colour' "
                        "(did you mean 'color'?); declare it under `vars`\n"),
        id="var-the-recipe-does-not-have"),
    pytest.param(Option(("run", "--concurrency", "0", "recipe.yaml"), EXIT_INVALID, usage(
        "run", "Invalid value for '--concurrency': 0 is not in the range 1<=x<=24.")),
        id="concurrency-0"),
    pytest.param(Option(("run", "--max-credits", "-1", "recipe.yaml"), EXIT_INVALID, usage(
        "run", "Invalid value for '--max-credits': -1.0 is not in the range x>=0.")),
        id="negative-budget"),
    pytest.param(Option(("run", "--out", "recipe.yaml", "recipe.yaml"), EXIT_INVALID, usage(
        "run", "Invalid value for '--out': Directory 'recipe.yaml' is a file.")),
        id="out-is-an-existing-file"),
    pytest.param(Option(("run", "images"), EXIT_INVALID,
                        refused("images: is a directory, not a recipe file", file="images")),
        id="recipe-is-a-directory"),
    pytest.param(Option(("run", "missing.yaml"), EXIT_INVALID,
                        refused("missing.yaml: no such recipe file", file="missing.yaml")),
        id="recipe-does-not-exist"),
    pytest.param(Option(("run", "recipe.yaml", "recipe.yaml"), EXIT_INVALID,
                        "kontext-pipeline: two recipes have the same name; run them separately "
                        "or rename one\n"), id="the-same-recipe-twice"),
    pytest.param(Option(("run", "recipe.yaml"), EXIT_INVALID, NO_KEY, {"BFL_API_KEY": None}),
                 id="no-api-key"),
    pytest.param(Option(("run", "recipe.yaml"), EXIT_INVALID, NO_KEY, {"BFL_API_KEY": "  "}),
                 id="a-blank-api-key"),
    pytest.param(Option(("run", "--frozen", "recipe.yaml"), EXIT_REFUSED,
                        "kontext-pipeline: --frozen: 1 step not in the cache; no provider was "
                        "called:\n  hostile / default / edit: no cached result for key "
                        "{key}\n"), id="frozen-with-an-empty-cache"),
    pytest.param(Option(("run", "--max-credits", "3", "recipe.yaml"), EXIT_REFUSED,
                        "kontext-pipeline: the steps that are not cached would cost 4 credits "
                        "($0.04), more than --max-credits 3; nothing was submitted\n"),
        id="over-budget"),
    pytest.param(Option(("cache", "gc"), EXIT_INVALID,
                        "kontext-pipeline: cache gc needs RECIPES to keep, --older-than DAYS, or "
                        "both\n"), id="cache-gc-with-nothing-to-keep"),
    pytest.param(Option(("run", "--api-base", "ftp://api.example", "recipe.yaml"), EXIT_INVALID,
                        STARTING + "kontext-pipeline: the API base URL 'ftp://api.example' is "
                                   "not an http:// or https:// URL; check --api-base or "
                                   "BFL_API_BASE\n"),
        id="api-base-not-http"),
    pytest.param(Option(("run", "recipe.yaml"), EXIT_INVALID,
                        STARTING + "kontext-pipeline: BFL_API_KEY holds characters an API key "
                                   "cannot have (only printable ASCII without spaces); check "
                                   "how it was set\n",
                        {"BFL_API_KEY": "bfl_clé"}), id="api-key-not-ascii"),
]


@pytest.mark.parametrize("option", OPTIONS)
def test_a_bad_option_is_refused_with_its_exit_code(work: Path, option: Option) -> None:
    write("recipe.yaml", f"{HEAD}vars:\n  color: blue\n{STEPS}")(work)
    (work / "images").mkdir()
    # a base URL where nothing listens: no case may reach a real API by mistake
    env = {"BFL_API_KEY": KEY, "BFL_API_BASE": "http://127.0.0.1:9",
           "KONTEXT_CACHE_DIR": "cache", **option.env}
    result = invoke(*option.args, env=env)
    assert result.exit_code == option.code
    stderr = option.stderr
    if "{key}" in stderr:
        stderr = stderr.replace("{key}", _only_key(work))
    assert result.stderr == stderr
    assert not (work / "out").exists()
    assert_no_traceback(result)


def _only_key(work: Path) -> str:
    """The cache key of the test recipe's only step, as --frozen names it."""
    spec = load_spec(work / "recipe.yaml")
    plan = build_plan(spec, overrides={}, env={}, provider="bfl")
    return plan.tasks[0].key(())[:12]


NUL = "holds a NUL character, which no path can contain"

NUL_PATHS = [
    pytest.param(("validate", "recipe\0.yaml"), usage(
        "validate", f"Invalid value for 'RECIPES...': 'recipe\\x00.yaml' {NUL}"),
        id="recipe-to-validate"),
    pytest.param(("plan", "recipe\0.yaml"), usage(
        "plan", f"Invalid value for 'RECIPE': 'recipe\\x00.yaml' {NUL}", "RECIPE"),
        id="recipe-to-plan"),
    pytest.param(("run", "--provider", "preview", "recipe.yaml\0"), usage(
        "run", f"Invalid value for 'RECIPES...': 'recipe.yaml\\x00' {NUL}"), id="recipe-to-run"),
    pytest.param(("run", "--provider", "preview", "--out", "out\0", "recipe.yaml"), usage(
        "run", f"Invalid value for '--out': 'out\\x00' {NUL}"), id="out"),
    pytest.param(("run", "--provider", "preview", "--cache-dir", "ca\0che", "recipe.yaml"),
                 usage("run", f"Invalid value for '--cache-dir': 'ca\\x00che' {NUL}"),
                 id="cache-dir"),
    pytest.param(("cache", "gc", "--cache-dir", "cache", "recipe\0.yaml"), usage(
        "cache gc", f"Invalid value for '[RECIPES]...': 'recipe\\x00.yaml' {NUL}",
        "[RECIPES]..."), id="recipe-to-keep"),
    pytest.param(("run", "--provider", "preview", "--out", "out", "--cache-dir", "cache",
                  "nul.yaml"), refused(
        "nul.yaml:4:10: inputs.photo: 'photo\\x00.png' holds a NUL character, which no file "
        "name can contain; remove it", file="nul.yaml"), id="an-input-inside-the-recipe"),
]


@pytest.mark.parametrize(("args", "stderr"), NUL_PATHS)
def test_a_nul_character_in_a_path_is_a_clean_usage_error(work: Path, args: tuple[str, ...],
                                                          stderr: str) -> None:
    write("recipe.yaml", HEAD + STEPS)(work)
    write("photo.png", image_bytes())(work)
    write("nul.yaml", HEAD + 'inputs:\n  photo: "photo\\0.png"\nsteps:\n  - id: edit\n'
                      "    image: photo\n    prompt: Make it blue\n")(work)
    result = invoke(*args)
    assert result.exit_code == EXIT_INVALID
    assert result.stderr == stderr
    assert result.stdout == ""
    assert not (work / "out").exists()
    assert not (work / "cache").exists()
    assert_no_traceback(result)


def test_an_output_directory_that_cannot_be_made_fails_without_a_traceback(work: Path) -> None:
    write("recipe.yaml", HEAD + STEPS)(work)
    write("afile", "not a directory\n")(work)
    result = invoke("run", "recipe.yaml", "--provider", "preview", "--out", "afile/sub",
                    "--cache-dir", "cache", "--json")
    assert result.exit_code == EXIT_FAILED
    assert result.stderr == ("kontext-pipeline: cannot create the output directory afile/sub: "
                             "Not a directory; choose another --out\n")
    assert_no_traceback(result)
    assert not (work / "cache").exists()  # refused before any step ran


def test_a_cache_directory_that_cannot_be_written_fails_before_any_request(work: Path) -> None:
    write("recipe.yaml", HEAD + STEPS)(work)
    write("afile", "not a directory\n")(work)
    result = invoke("run", "recipe.yaml", "--provider", "preview", "--cache-dir", "afile",
                    "--out", "out")
    assert result.exit_code == EXIT_FAILED
    assert result.stderr == ("kontext-pipeline: cannot write to the cache in afile: Not a "
                             "directory; check that it is a writable directory, or choose "
                             "another --cache-dir\n")
    assert_no_traceback(result)
    assert not (work / "out").exists()  # refused before any step ran


# --- the API's answers -------------------------------------------------------------------------

class Scripted:
    """The bundled server, with the answer of an endpoint (``submit``, ``poll``,
    ``download``) replaced by a scripted one."""

    def __init__(self) -> None:
        self.state = ServerState(ServerConfig(latency=0.05))
        self.app = create_app(state=self.state)
        self.answers: dict[str, Response] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = self.answers.get(_endpoint(scope)) if scope["type"] == "http" else None
        await (answer or self.app)(scope, receive, send)


def _endpoint(scope: Scope) -> str:
    path = str(scope["path"])
    if scope["method"] == "POST":
        return "submit"
    return "poll" if path.endswith("/get_result") else "download"


@dataclass
class Served:
    scripted: Scripted
    url: str


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """One scripted server for the module, on a loopback port."""
    scripted = Scripted()
    server = uvicorn.Server(uvicorn.Config(scripted, host="127.0.0.1", port=0,
                                          log_level="critical", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60  # starting, not timing: generous for a loaded machine
    while not server.started:
        assert thread.is_alive()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield Served(scripted, f"http://127.0.0.1:{port}")
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def api(served: Served) -> Iterator[Served]:
    served.scripted.answers.clear()
    yield served
    served.scripted.answers.clear()


@dataclass(frozen=True)
class Answer:
    """The scripted answer of one endpoint, and what the user then sees."""

    endpoint: str
    response: Response
    code: int
    stderr: str


FAILED = "kontext-pipeline: 1 step failed:\n  hostile / default / edit: "
NOT_AUTHENTICATED = "Not authenticated: send your API key in the x-key header"
NO_RESULT_URL = FAILED + "the API said Ready but gave no result URL\n"

ANSWERS = [
    pytest.param(Answer(
        "submit", JSONResponse({"status": "Pending"}), EXIT_FAILED,
        FAILED + "the API accepted the submit but its answer has no task id; not "
                         "retried\n"), id="submit-answer-without-id"),
    pytest.param(Answer(
        "submit", Response("<html><body>Bad gateway</body></html>", media_type="text/html"),
        EXIT_FAILED,
        FAILED + "the API's answer to the submit is not JSON; it may have accepted and "
                         "billed it, so it is not retried\n"),
        id="submit-answer-not-json"),
    pytest.param(Answer(
        "submit", JSONResponse({"id": "t1",
                                "polling_url": "http://203.0.113.7/v1/get_result?id=t1"}),
        EXIT_FAILED,
        FAILED + "the API gave a polling URL on 203.0.113.7, outside {netloc}'s domain; "
                         "the key is not sent there\n"), id="polling-url-on-another-host"),
    pytest.param(Answer(
        "poll", JSONResponse({"id": "t1", "status": "Ready", "result": {"seed": 1}}),
        EXIT_FAILED, NO_RESULT_URL), id="ready-without-sample"),
    pytest.param(Answer(
        "poll", JSONResponse({"id": "t1", "status": "Ready", "result": None}),
        EXIT_FAILED, NO_RESULT_URL), id="ready-without-result"),
    pytest.param(Answer(
        "download", Response(b"", headers={"content-length": "60000000"},
                             media_type="image/png"),
        EXIT_FAILED, FAILED + "the result is 60000000 bytes; at most 50000000 are accepted\n"),
        id="a-60-mb-result"),
    pytest.param(Answer(
        "submit", JSONResponse({"detail": NOT_AUTHENTICATED}, status_code=401), EXIT_FAILED,
        "kontext-pipeline: the API refused the key (HTTP 401) on submit: check BFL_API_KEY "
        f"({NOT_AUTHENTICATED})\n"), id="401"),
    pytest.param(Answer(
        "submit", JSONResponse({"detail": "Invalid API key"}, status_code=403), EXIT_FAILED,
        "kontext-pipeline: the API refused the key (HTTP 403) on submit: check BFL_API_KEY "
        "(Invalid API key)\n"), id="403"),
    pytest.param(Answer(
        "poll", JSONResponse({"detail": "Invalid API key"}, status_code=403), EXIT_FAILED,
        "kontext-pipeline: the API refused the key (HTTP 403) on poll: check BFL_API_KEY "
        "(Invalid API key)\n"), id="403-while-polling"),
    pytest.param(Answer(
        "submit", JSONResponse({"detail": [{"type": "string_too_long", "loc": ["body", "prompt"],
                                            "msg": "String should have at most 10000 "
                                                   "characters"}]}, status_code=422),
        EXIT_FAILED,
        FAILED + "the API rejected the request (HTTP 422) (prompt: String should have at "
                         "most 10000 characters)\n"), id="422"),
]


@pytest.mark.parametrize("answer", ANSWERS)
def test_a_broken_api_answer_fails_the_run_with_a_message(work: Path, api: Served,
                                                          answer: Answer) -> None:
    api.scripted.answers[answer.endpoint] = answer.response
    result = run_against(work, api.url)
    assert result.exit_code == answer.code
    assert result.stderr == answer.stderr.replace("{netloc}", api.url.removeprefix("http://"))
    if answer.stderr.startswith(FAILED):  # the step failed, the run finished: a manifest
        assert [s["status"] for s in json.loads(result.stdout)["steps"]] == ["failed"]
    else:  # the run stopped at once
        assert result.stdout == ""
    assert not list((work / "cache").glob("v1/objects/*/*"))
    assert_no_traceback(result)


def run_against(work: Path, url: str, key: str = KEY) -> Result:
    write("recipe.yaml", HEAD + "steps:\n  - id: edit\n    prompt: A red apple on a table\n")(work)
    return invoke("run", "recipe.yaml", "--api-base", url, "--cache-dir", "cache", "--out", "out",
                  "--json", env={"BFL_API_KEY": key})


def test_out_of_credits_stops_the_run(work: Path, api: Served) -> None:
    result = run_against(work, api.url, key="bfl_no_credits")  # the bundled server's 402
    assert result.exit_code == EXIT_FAILED
    assert result.stderr == ("kontext-pipeline: the BFL account is out of credits (HTTP 402): "
                             "add credits, then run again; finished steps stay cached\n")
    assert result.stdout == ""
    assert_no_traceback(result)


def test_a_submit_answer_without_polling_url_is_polled_the_legacy_way(
        work: Path, bfl_server: Start) -> None:
    server = bfl_server(return_polling_url=False)
    result = run_against(work, server.url)
    assert result.exit_code == 0
    assert result.stderr == ""
    assert json.loads(result.stdout)["totals"]["failed"] == 0
    assert (work / "out" / "edit.png").is_file()
    assert {r.path for r in server.state.requests if r.method == "GET"} >= {"/v1/get_result"}


# Answers retried until the policy gives up run through the library, with the tests' quick
# retry policy (the command line's would wait half a minute); the exit code is the one the
# command line gives for the failures they report.

LIBRARY_ANSWERS = [
    pytest.param("download", Response(b"<html>not an image</html>", media_type="image/png"),
                 "the result could not be downloaded: the downloaded result is not an image file "
                 "that can be decoded (task {task})", id="a-result-that-is-not-an-image"),
    pytest.param("poll", Response("upstream timeout", media_type="text/plain"),
                 "polling failed 6 times in a row; last: the answer is not JSON (task {task})",
                 id="poll-answers-not-json"),
    pytest.param("poll", JSONResponse(["Ready"]),
                 "polling failed 6 times in a row; last: the answer is not a JSON object "
                 "(task {task})", id="poll-answers-a-list"),
]


@pytest.mark.parametrize(("endpoint", "answer", "message"), LIBRARY_ANSWERS)
def test_an_answer_that_stays_broken_fails_the_step_after_its_retries(
        work: Path, api: Served, endpoint: str, answer: Response, message: str) -> None:
    api.scripted.answers[endpoint] = answer
    before = set(api.scripted.state.tasks)
    write("recipe.yaml", HEAD + "steps:\n  - id: edit\n    prompt: A red apple on a table\n")(work)
    plan = build_plan(load_spec(work / "recipe.yaml"), overrides={}, env={}, provider="bfl")
    reports = run_pipelines([plan], cache=Cache(work / "cache"), out_dirs=[work / "out"],
                            open_provider=lambda: quick_provider(api.url))
    (task,) = set(api.scripted.state.tasks) - before
    error = StepsFailedError([line for report in reports for line in report.failures])
    assert str(error) == ("1 step failed:\n  hostile / default / edit: "
                          + message.replace("{task}", task))
    assert exit_code(error) == EXIT_FAILED


def quick_provider(url: str) -> BflProvider:
    return BflProvider(client=http_client(timeout=10.0), api_key=KEY, api_base=url,
                       retry=RetryPolicy(attempts=6, base_delay=0.01, max_delay=0.05),
                       polling=PollPolicy(first=0.02, max_interval=0.05, deadline=30.0))
