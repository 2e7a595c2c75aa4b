"""``--shard I/N`` for ``run`` and ``plan``: this job's share of the variants (see
:mod:`kontext_pipeline.plan._shards`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from kontext_pipeline.plan._shards import Shard

__all__ = ["shard_option"]


def _parse_shard(_ctx: click.Context, _param: click.Parameter,
                 value: str | None) -> Shard | None:
    """The option's :class:`Shard`; a wrong value is a :class:`UsageError` (exit 2) with the
    library's pinned text, not click's."""
    if value is None:
        return None
    from kontext_pipeline.plan._shards import parse_shard  # noqa: PLC0415  (keeps --help fast)

    return parse_shard(value)


shard_option = click.option(
    "--shard", callback=_parse_shard, metavar="I/N",
    help="Run only the I-th of N disjoint, stable shares of the variants (N CI jobs together "
         "run every variant once); `report --merge` combines their folders.")
