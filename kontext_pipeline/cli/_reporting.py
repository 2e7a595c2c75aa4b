"""``report``: rebuild a run's ``report.html`` from its ``manifest.json`` and the cache (or the
files the run exported, for images the cache no longer has)."""

from __future__ import annotations

import click

from kontext_pipeline.cli._base import cache_dir_option, cli, open_cache
from kontext_pipeline.cli._output import echo

__all__ = ["report"]

_SHOWN = 10  # warnings about images that cannot be shown, before a count of the rest


@cli.command()
@click.argument("out_dir", type=click.Path(path_type=str))
@cache_dir_option
def report(out_dir: str, cache_dir: str | None) -> None:
    """Rebuild OUT_DIR/report.html (a page of every variant's images, step by step) from
    OUT_DIR/manifest.json and the cache that the run used (or, for images the cache no longer
    has, the files the run exported into OUT_DIR)."""
    from pathlib import Path  # noqa: PLC0415

    from kontext_pipeline.outputs._html_report import render_report, write_report  # noqa: PLC0415
    from kontext_pipeline.outputs._manifest import MANIFEST, read_manifest  # noqa: PLC0415
    from kontext_pipeline.runner._pipelines import REPORT  # noqa: PLC0415

    folder = Path(out_dir)
    manifest = read_manifest(folder / MANIFEST)
    store = open_cache(cache_dir)
    page = render_report(manifest, cache=store, base=folder)
    for problem in page.problems[:_SHOWN]:
        echo(f"warning: {problem}", err=True)
    if len(page.problems) > _SHOWN:
        echo(f"warning: … and {len(page.problems) - _SHOWN} more images that cannot be "
             "shown", err=True)
    lacking = "(removed by `cache gc` or `cache clear`, or the run used another --cache-dir)"
    if page.from_files:
        count = len(page.from_files)  # "1 of this run's images"
        echo(f"note: the cache in {store.directory} lacks {count} of this run's images "
             f"{lacking}; the report shows the files the run exported into {folder} instead",
             err=True)
    if any("not in the cache" in problem for problem in page.problems):
        echo(f"warning: the cache in {store.directory} lacks some of this run's images "
             f"{lacking}, and {folder} has no exported file of them as the run wrote it; the "
             "report shows placeholders for them", err=True)
    write_report(folder / REPORT, page)
    missing = len(page.problems)
    echo(f"{folder / REPORT}: {len(manifest.variants)} variant"
         f"{'' if len(manifest.variants) == 1 else 's'}, {page.shown} image"
         f"{'' if page.shown == 1 else 's'}"
         + (f", {missing} not shown" if missing else ""))
