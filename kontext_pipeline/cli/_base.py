"""What every command shares: the group, the error-to-exit-code map, common options, and
loading recipes. Heavy modules are imported only inside the commands that need them, so
``--help`` starts fast."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from kontext_pipeline.cli._output import echo
from kontext_pipeline.errors import (
    CacheError,
    KontextError,
    LockError,
    OutputError,
    ProviderError,
    RefusedToSpendError,
    SpecError,
    StepsFailedError,
    UsageError,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from kontext_pipeline._support.diagnostics import Problem
    from kontext_pipeline.plan._resolution import FromShared
    from kontext_pipeline.recipe._spec import Spec
    from kontext_pipeline.store._cache import Cache
    from kontext_pipeline.store._shared import SharedCache

__all__ = ["EXIT_CODES", "cli", "exit_code"]

EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_REFUSED = 3
EXIT_INTERRUPTED = 130

EXIT_CODES: tuple[tuple[type[KontextError], int], ...] = (
    (SpecError, EXIT_INVALID),
    (UsageError, EXIT_INVALID),
    (LockError, EXIT_INVALID),
    (RefusedToSpendError, EXIT_REFUSED),
    (ProviderError, EXIT_FAILED),
    (StepsFailedError, EXIT_FAILED),
    (CacheError, EXIT_FAILED),
    (OutputError, EXIT_FAILED),
)
"""Each error class and its documented exit code; the first matching class wins."""

_PROVIDERS = ("bfl", "preview")


def exit_code(error: KontextError) -> int:
    """The documented exit code of ``error``."""
    for kind, code in EXIT_CODES:
        if isinstance(error, kind):
            return code
    return EXIT_FAILED


def _report(error: KontextError) -> None:
    if isinstance(error, SpecError):
        for problem in error.problems:
            echo(problem.format(), err=True)
        errors = sum(1 for p in error.problems if p.is_error)
        files = sorted({p.file for p in error.problems})
        noun = "problem" if errors == 1 else "problems"
        echo(f"kontext-pipeline: {errors} {noun} in {', '.join(files)}", err=True)
    else:
        echo(f"kontext-pipeline: {error}", err=True)


class _Path(click.Path):
    """A path option or argument that refuses a NUL character as a usage error (exit 2): no
    system has such a path, and the operating system's answer to one is a ``ValueError``."""

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        if isinstance(value, str) and "\0" in value:
            from kontext_pipeline._support.text import printable  # noqa: PLC0415

            self.fail(f"'{printable(value)}' holds a NUL character, which no path can contain",
                      param, ctx)
        return super().convert(value, param, ctx)


class _Command(click.Command):
    """A command whose path parameters are :class:`_Path`: every command gets them, whoever
    declares its options with plain ``click.Path``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if type(param.type) is click.Path:
                path = _Path.__new__(_Path)
                path.__dict__.update(vars(param.type))
                param.type = path


class _Commands(click.Group):
    """A group of commands below the top one (``cache``)."""

    command_class = _Command
    group_class = type


class _Group(click.Group):
    """Maps every library error to its exit code, with one message and no traceback."""

    command_class = _Command
    group_class = _Commands

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KontextError as error:
            _report(error)
            ctx.exit(exit_code(error))
        except KeyboardInterrupt:
            click.echo("kontext-pipeline: interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)


def _parse_vars(_ctx: click.Context, _param: click.Parameter,
                values: Sequence[str]) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"'{item}' is not NAME=VALUE", param_hint="--var")
        if not value.strip():
            raise click.BadParameter(
                f"'{item}' has an empty value; write --var {name.strip()}=VALUE, or leave "
                f"--var {name.strip()} out to keep the recipe's value", param_hint="--var")
        parsed[name.strip()] = value
    return parsed


var_option = click.option(
    "--var", "variables", multiple=True, metavar="NAME=VALUE", callback=_parse_vars,
    help="Override a recipe variable, or select the variants with this matrix value. Repeatable.")
provider_option = click.option(
    "--provider", type=click.Choice(_PROVIDERS), default="bfl", show_default=True,
    help="Who makes the images: the BFL API, or the offline preview stand-in.")
recipe_argument = click.argument(
    "recipe", type=click.Path(dir_okay=True, path_type=str))


cache_dir_option = click.option(
    "--cache-dir", envvar="KONTEXT_CACHE_DIR", type=click.Path(path_type=str),
    help="Cache directory (or KONTEXT_CACHE_DIR; default: the user cache directory).")


def shared_cache_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--shared-cache URL`` and ``--shared-cache-readonly``, each also from the environment."""
    command = click.option(
        "--shared-cache-readonly", "shared_readonly", is_flag=True,
        envvar="KONTEXT_SHARED_CACHE_READONLY",
        help="Look results up in the shared cache, never upload (or "
             "KONTEXT_SHARED_CACHE_READONLY=1): for pull requests.")(command)
    return click.option(
        "--shared-cache", "shared_cache", metavar="URL", envvar="KONTEXT_SHARED_CACHE",
        help="A cache on object storage behind the local one, for a team or CI fleet: "
             "s3://BUCKET/PREFIX (or gs://, az://; or KONTEXT_SHARED_CACHE). Credentials and "
             "endpoint from the storage's environment (AWS_*).")(command)


def open_shared(url: str | None, *, readonly: bool,
                going_on: str | None = None) -> SharedCache | None:
    """The shared cache at ``url`` (None without one); warnings go to standard error."""
    if not url:
        return None
    from kontext_pipeline._support.text import printable  # noqa: PLC0415
    from kontext_pipeline.store._shared import SharedCache  # noqa: PLC0415

    def warn(message: str) -> None:
        echo(f"warning: {printable(message)}", err=True)

    return SharedCache.open(url, os.environ, readonly=readonly, on_warning=warn,
                            going_on=going_on)


def peeking(shared: SharedCache | None) -> FromShared | None:
    """The shared cache as a plan looks at it: the entries it holds are read, not taken."""
    if shared is None or not shared.on:
        return None
    return lambda task, key, expected: shared.peek(key, task.params.output_format,
                                                   expected=expected)


def open_cache(cache_dir: str | None) -> Cache:
    from pathlib import Path  # noqa: PLC0415

    from kontext_pipeline.store._cache import Cache, default_cache_dir  # noqa: PLC0415

    return Cache(Path(cache_dir) if cache_dir else default_cache_dir(os.environ))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"],
                                           "max_content_width": 100})
@click.version_option(None, "-V", "--version", package_name="kontext-pipeline",
                      prog_name="kontext-pipeline")
def cli() -> None:
    """Declarative, cached, reproducible FLUX.1 Kontext edit recipes.

    \b
    Start with:  kontext-pipeline validate pipelines/*.yaml
    Then:        kontext-pipeline plan pipelines/poster-chain.yaml
    """


def load(recipe: str) -> Spec:
    from kontext_pipeline.recipe._spec import load_spec  # noqa: PLC0415  (keeps --help fast)

    return load_spec(recipe, env=os.environ)



def load_all(recipes: Sequence[str]) -> list[Spec]:
    """Load every recipe, reporting the problems of all of them at once."""
    specs: list[Spec] = []
    problems: list[Problem] = []
    for recipe in recipes:
        try:
            specs.append(load(recipe))
        except SpecError as error:
            problems.extend(error.problems)
    if problems:
        raise SpecError(problems)
    return specs
