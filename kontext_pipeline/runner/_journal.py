"""The request journal: tasks the API accepted whose results are not in the cache yet.

As soon as a submit is answered, its task id and polling URL are written here (durably: the file
is flushed to disk before polling starts), one file per cache key::

    v1/journal/ab/<key>.json

The entry is removed once the result is stored, or once the task has ended without one
(moderated, failed). A run that was interrupted (Ctrl-C, SIGTERM, SIGKILL, a CI job's time limit)
leaves its entries behind; the next run of the same steps finds them and polls those tasks
instead of submitting (and paying for) them again. A task the API no longer knows (BFL keeps
results for a limited time) is submitted again, with a warning.

Beside each entry lies the key's claim (``<key>.lock``, see :mod:`kontext_pipeline.store._claims`):
held by the run making that key's image, from before its submit until its result is stored, so
that two runs sharing a cache never pay for one key twice. The second waits for the claim, then
finds the result in the cache, or (if the first run died) its accepted task here, to collect.

An entry holds no secret: the key is never written, and a polling URL is only ever sent the key
if it is on the API's own host (see :mod:`kontext_pipeline.providers.bfl`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from kontext_pipeline._support import jsonsafe
from kontext_pipeline._support.files import read_regular, write_atomic
from kontext_pipeline.providers._base import Accepted
from kontext_pipeline.store._cache_walk import files
from kontext_pipeline.store._claims import Claim, held, sweep, try_claim

__all__ = ["Journal", "JournalEntry"]

_LAYOUT = "journal-v1"
_MAX_ENTRY_BYTES = 64_000  # an entry is a few hundred bytes; a larger file is not read


@dataclass(frozen=True)
class JournalEntry:
    """One accepted task: which cache key and provider it is for, and how to find it again."""

    key: str
    provider: str
    label: str
    accepted: Accepted

    def to_json(self) -> dict[str, object]:
        return {"layout": _LAYOUT, "key": self.key, "provider": self.provider,
                "label": self.label, **asdict(self.accepted)}

    @classmethod
    def from_json(cls, data: object) -> JournalEntry:
        if not isinstance(data, dict) or data.get("layout") != _LAYOUT:
            raise ValueError("not a journal entry")
        cost = data["cost"]
        accepted = Accepted(task_id=str(data["task_id"]), polling_url=str(data["polling_url"]),
                            api_base=str(data["api_base"]),
                            cost=(cost if isinstance(cost, int | float)
                                  and not isinstance(cost, bool) else None),
                            submitted_at=float(data["submitted_at"]))
        return cls(key=str(data["key"]), provider=str(data["provider"]),
                   label=str(data["label"]), accepted=accepted)


class Journal:
    """The journal in ``directory`` (created on first write)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def record(self, entry: JournalEntry) -> None:
        """Write ``entry`` and flush it to disk before returning."""
        document = json.dumps(entry.to_json(), indent=1, sort_keys=True).encode()
        write_atomic(self.path(entry.key), document, durable=True, inside=self.directory)

    def find(self, key: str, provider: str) -> JournalEntry | None:
        """The entry of ``key`` made by ``provider``, if there is a readable one."""
        entry = _read(self.path(key))
        return entry if entry and entry.key == key and entry.provider == provider else None

    def claim(self, key: str) -> Claim | None:
        """Claim ``key`` for this run without waiting (None while another run holds it)."""
        return try_claim(self._lock(key), inside=self.directory)

    def held(self, key: str) -> bool:
        """Whether another run holds the claim of ``key`` now (it is making that image)."""
        return held(self._lock(key))

    def _lock(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.lock"

    def sweep_claims(self) -> int:
        """Remove the claim files that no run holds (left by runs that were killed)."""
        return sweep([path for path in files(self.directory) if path.suffix == ".lock"])

    def remove(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def entries(self) -> Iterator[JournalEntry]:
        """Every readable entry."""
        for path in files(self.directory):
            entry = _read(path) if path.suffix == ".json" else None
            if entry is not None:
                yield entry


def _read(path: Path) -> JournalEntry | None:
    """The entry in the file at ``path``: a regular file (a link is not followed) of at most
    a few kilobytes; None if there is none, or a damaged one (its step is then submitted and
    journalled afresh)."""
    try:
        return JournalEntry.from_json(jsonsafe.loads(read_regular(path, _MAX_ENTRY_BYTES)))
    except (OSError, ValueError, KeyError, TypeError):
        return None
