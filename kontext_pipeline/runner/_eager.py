"""Each new result's exported files and report thumbnail made as soon as it is stored, while
the run waits on the API, so that its end only moves the files into place and writes the
manifest, the report and the lock.

The executor tells of each task's record as soon as it is settled (its task and cache entry).
The work runs on three low-priority threads and holds no image in memory while it waits: each
job reads its result back from the cache (it was just written: the bytes are in the page
cache).

While a step still builds on a result not stored yet, the work waits for a lull in the results
(see :mod:`._backlog`): results that come together are downloaded, stored and followed by
their next steps' submits at that very moment, and work beside them on other threads made each
of those hand-overs about twice as long. Once the last such result is stored, its next steps
are submitted at once; from the first result after it on, no submit follows a result, and
waiting would only move the work to the run's end.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from kontext_pipeline.outputs._export import export_files, exported_bytes, variant_folders
from kontext_pipeline.outputs._records import StepRecord
from kontext_pipeline.outputs._staging import Staging
from kontext_pipeline.outputs._thumbnails import (
    Thumbnail,
    ThumbnailError,
    ThumbnailStore,
    make_thumbnail,
)
from kontext_pipeline.plan._plan import Plan, Task
from kontext_pipeline.runner._backlog import Backlog
from kontext_pipeline.store._cache import Cache, CacheEntry
from kontext_pipeline.store._lock import prepare_writing

__all__ = ["EagerFinish"]

_THUMBNAILERS = 2  # thumbnails are CPU work: more threads would compete with the run itself
_LULL = 0.1  # seconds without a new result before the threads start on the work waiting…
_PATIENCE = 1.0  # …or at most this long after the oldest result waiting was stored


class EagerFinish:
    """The work done on each new result while the run goes on: its files written ahead into
    each recipe's ``--out`` (see :mod:`..outputs._staging`) on one thread, its thumbnail made
    and kept in ``store`` on two more, and, once, what the report and the lock need loaded.
    The end of the run waits for the files before it exports, and for the thumbnails only
    before it writes the report, helping with what is left (see :mod:`._backlog`)."""

    def __init__(self, plans: Sequence[Plan], out_dirs: Sequence[Path], *, cache: Cache,
                 store: ThumbnailStore, known: Mapping[str, CacheEntry]) -> None:
        self.cache = cache
        self.store = store
        self._known = frozenset(known)
        self._thumbnailing: set[str] = set()  # images whose thumbnail is queued or made
        self.stagings = {plan.spec.name: Staging(out_dir)
                         for plan, out_dir in zip(plans, out_dirs, strict=True)}
        self.thumbnails: dict[str, Thumbnail] = {}  # by the sha256 of the image
        self._plans = {plan.spec.name: (plan, variant_folders(plan)) for plan in plans}
        self._preparing = False
        # the results that later steps take as input, not settled yet
        self._feeding = {f"{plan.spec.name}/{task.variant}/{image.name}"
                         for plan in plans for task in plan.tasks
                         for image in task.images if image.is_step}
        self._last_fed = False  # the last of them settled; the next record hurries the work
        lull = _LULL if self._feeding else 0.0
        self._staging = Backlog(1, "staging", lull=lull, patience=_PATIENCE)
        self._pictures = Backlog(_THUMBNAILERS, "thumbnails", lull=lull, patience=_PATIENCE)

    def settled(self, record: StepRecord) -> None:
        """Told of each task's record on the event loop's thread (a
        :data:`~._executor.SettledSink`): the work of a result new to this run is queued (the
        export at the end writes what a result known before the run needs)."""
        if self._last_fed:  # its next steps were submitted meanwhile: none follows any more
            self._last_fed = False
            self._staging.hurry()
            self._pictures.hurry()
        if self._feeding:
            self._feeding.discard(record.task.id)
            self._last_fed = not self._feeding  # its next steps are about to be submitted
        entry = record.entry
        if not record.ok or entry is None or record.task.id in self._known:
            return
        self._staging.submit(lambda: self._stage(entry, record.task))
        if not self._preparing:
            self._preparing = True
            self._pictures.submit(_prepare_finish)
        if entry.object not in self._thumbnailing:
            self._thumbnailing.add(entry.object)
            self._pictures.submit(lambda: self._thumbnail(entry))

    def wait_staged(self) -> None:
        """Wait until the files of the results stored so far are written, helping (blocking)."""
        self._staging.drain()

    def wait_thumbnails(self) -> None:
        """Wait until the thumbnails of the results stored so far are made, helping
        (blocking)."""
        self._pictures.drain()

    def close(self) -> None:
        """Drop the work not started, wait for the rest, and remove what was staged and not
        placed (blocking)."""
        self._staging.close()
        self._pictures.close()
        for staging in self.stagings.values():
            staging.close()

    def _stage(self, entry: CacheEntry, task: Task) -> None:
        """Write the files of ``task``, whose result is ``entry``; what fails here, the export
        does again (and tells why, if it fails there too)."""
        try:
            image = self.cache.read(entry)
            fingerprint, data = exported_bytes(task, entry, image)
        except (OSError, ValueError):
            return
        plan, folders = self._plans[task.pipeline]
        digest = hashlib.sha256(data).hexdigest()
        for relative in export_files(plan, folders, task, entry.format):
            self.stagings[task.pipeline].stage(relative, fingerprint, data, digest)

    def _thumbnail(self, entry: CacheEntry) -> None:
        """Make and keep the thumbnail of ``entry``'s image; the report makes it if this
        cannot."""
        thumbnail = self.store.get(entry.object)  # an image seen before, under another key
        if thumbnail is None:
            try:
                thumbnail = make_thumbnail(self.cache.read(entry))
            except (OSError, ValueError, ThumbnailError):
                return
            self.store.put(entry.object, thumbnail)
        self.thumbnails[entry.object] = thumbnail


def _prepare_finish() -> None:
    """Compile the report's template and load what writing the lock needs, while the run
    waits (tens of milliseconds each) rather than at its end."""
    from kontext_pipeline.outputs._html_report import compile_template  # noqa: PLC0415

    for prepare in (compile_template, prepare_writing):
        with contextlib.suppress(Exception):  # the end does it again, and says why
            prepare()
