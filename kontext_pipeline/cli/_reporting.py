"""``report``: rebuild a run's ``report.html`` from its ``manifest.json`` and the cache (or the
files the run exported, for images the cache no longer has); ``report --merge``: combine the
folders of a run's shards (``run --shard I/N``) into one, with one manifest and one report."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from kontext_pipeline.cli._base import cache_dir_option, cli, open_cache
from kontext_pipeline.cli._output import echo
from kontext_pipeline.errors import UsageError

if TYPE_CHECKING:
    from pathlib import Path

    from kontext_pipeline.outputs._html_report import Page
    from kontext_pipeline.outputs._manifest import Manifest
    from kontext_pipeline.store._cache import Cache

__all__ = ["report"]

_SHOWN = 10  # warnings about images that cannot be shown, before a count of the rest


@cli.command()
@click.argument("folders", nargs=-1, metavar="OUT_DIR | --merge INTO SHARD_DIR...",
                type=click.Path(path_type=str))
@click.option("--merge", "into", metavar="INTO", type=click.Path(path_type=str),
              help="Combine the SHARD_DIRs (the --out folders of `run --shard 1/N` to N/N) "
                   "into INTO: one manifest.json, every exported file, one report.html.")
@cache_dir_option
def report(folders: tuple[str, ...], into: str | None, cache_dir: str | None) -> None:
    """Rebuild OUT_DIR/report.html (a page of every variant's images, step by step) from
    OUT_DIR/manifest.json and the cache that the run used (or, for images the cache no longer
    has, the files the run exported into OUT_DIR).

    With --merge INTO SHARD_DIR...: combine the folders of the N shards of one run into INTO,
    as a run of every variant would have written it."""
    if into is not None:
        _merge(into, folders, cache_dir)
        return
    if len(folders) != 1:
        raise UsageError(
            "report takes one OUT_DIR, the --out folder of a run"
            + (f" (given {len(folders)}); to combine the folders of shards, write "
               "report --merge INTO SHARD_DIR..." if folders else ""))
    _rebuild(folders[0], cache_dir)


def _rebuild(out_dir: str, cache_dir: str | None) -> None:
    from pathlib import Path  # noqa: PLC0415

    from kontext_pipeline.outputs._manifest import MANIFEST, read_manifest  # noqa: PLC0415

    folder = Path(out_dir)
    manifest = read_manifest(folder / MANIFEST)
    store = open_cache(cache_dir)
    page = _write_page(manifest, folder, store)
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
    echo(f"{_report_path(folder)}: {_summary(manifest, page)}")


def _merge(into: str, folders: tuple[str, ...], cache_dir: str | None) -> None:
    from pathlib import Path  # noqa: PLC0415

    from kontext_pipeline.outputs._merge import merge_shards  # noqa: PLC0415

    if not folders:
        raise UsageError("report --merge INTO takes the folders of the shards after INTO: "
                         "report --merge INTO SHARD_DIR...")
    merged = merge_shards(Path(into), [Path(folder) for folder in folders],
                          on_warning=lambda message: echo(f"warning: {message}", err=True))
    page = _write_page(merged.manifest, merged.into, open_cache(cache_dir))
    count = len(merged.shards)
    echo(f"{_report_path(merged.into)}: {count} shard{'' if count == 1 else 's'} merged, "
         f"{merged.files} file{'' if merged.files == 1 else 's'} copied, "
         f"{_summary(merged.manifest, page)}")


def _write_page(manifest: Manifest, folder: Path, store: Cache) -> Page:
    """Render and write ``folder``'s report, warning of each image it cannot show."""
    from kontext_pipeline.outputs._html_report import render_report, write_report  # noqa: PLC0415

    page = render_report(manifest, cache=store, base=folder)
    for problem in page.problems[:_SHOWN]:
        echo(f"warning: {problem}", err=True)
    if len(page.problems) > _SHOWN:
        echo(f"warning: … and {len(page.problems) - _SHOWN} more images that cannot be "
             "shown", err=True)
    write_report(_report_path(folder), page)
    return page


def _report_path(folder: Path) -> Path:
    from kontext_pipeline.runner._pipelines import REPORT  # noqa: PLC0415

    return folder / REPORT


def _summary(manifest: Manifest, page: Page) -> str:
    variants, missing = len(manifest.variants), len(page.problems)
    return (f"{variants} variant{'' if variants == 1 else 's'}, {page.shown} image"
            f"{'' if page.shown == 1 else 's'}" + (f", {missing} not shown" if missing else ""))
