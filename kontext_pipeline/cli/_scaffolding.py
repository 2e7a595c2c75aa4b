"""``init``: scaffold a first recipe, ready to validate and to run offline."""

from __future__ import annotations

import click

from kontext_pipeline.cli._base import cli

__all__ = ["init"]


@cli.command()
@click.argument("directory", default=".", required=False,
                type=click.Path(file_okay=False, path_type=str))
@click.option("--force", is_flag=True, help="Replace the files if they already exist.")
def init(directory: str, force: bool) -> None:
    """Write a recipe with a comment on every field, its JSON Schema and an example image into
    DIRECTORY (default: the current one)."""
    from pathlib import Path  # noqa: PLC0415

    from kontext_pipeline.recipe._scaffold import RECIPE_FILE, write_scaffold  # noqa: PLC0415

    folder = Path(directory)
    for written in write_scaffold(folder, force=force):
        click.echo(f"{'replaced' if written.replaced else 'created'} {written.path}")
    recipe = folder / RECIPE_FILE
    click.echo("next:")
    click.echo(f"  kontext-pipeline validate {recipe}")
    click.echo(f"  kontext-pipeline run {recipe} --provider preview")
