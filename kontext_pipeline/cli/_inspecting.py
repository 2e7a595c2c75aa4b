"""``inspect``: the provenance an exported image carries."""

from __future__ import annotations

import click

from kontext_pipeline.cli._base import cli
from kontext_pipeline.cli._output import echo, echo_json

__all__ = ["inspect"]


@cli.command()
@click.argument("image", type=click.Path(dir_okay=True, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the provenance as JSON.")
def inspect(image: str, as_json: bool) -> None:
    """Show which recipe, variant and step made an exported PNG or JPEG: model, seed, prompt,
    provider, cache key, and the sha256 of the image as generated (the manifest's)."""
    import json  # noqa: PLC0415  (kept off --help's path)
    from pathlib import Path  # noqa: PLC0415

    from kontext_pipeline.outputs._provenance import read_provenance_file  # noqa: PLC0415

    found = read_provenance_file(Path(image))
    if as_json:
        echo_json(json.dumps({"file": image, **found.to_json()}, indent=2, ensure_ascii=False))
    else:
        echo(found.describe())
