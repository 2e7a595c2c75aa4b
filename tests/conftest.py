"""Shared helpers: the repository's paths, a CLI runner, and recipe files written on the fly."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from PIL import Image

from kontext_pipeline.cli import cli

ROOT = Path(__file__).resolve().parent.parent
PIPELINES = ROOT / "pipelines"
INVALID = Path(__file__).resolve().parent / "recipes" / "invalid"

RunCli = Callable[..., Result]
WriteRecipe = Callable[..., Path]


@pytest.fixture
def run_cli() -> RunCli:
    """Invoke the command line in-process; stdout and stderr are kept apart."""

    def run(*args: str, env: dict[str, str] | None = None) -> Result:
        return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)

    return run


@pytest.fixture
def write_recipe(tmp_path: Path) -> WriteRecipe:
    """Write a recipe (dedented) into a fresh directory that also holds ``photo.png``."""
    Image.new("RGB", (32, 24), (30, 120, 200)).save(tmp_path / "photo.png")

    def write(text: str, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
        return path

    return write
