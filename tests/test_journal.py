"""The request journal: accepted tasks are written durably and found again, never a secret."""

from __future__ import annotations

import json
from pathlib import Path

from kontext_pipeline.journal import Journal, JournalEntry
from kontext_pipeline.providers.base import Accepted

KEY = "ab" + "c" * 62
API_BASE = "https://api.example"


def entry(key: str = KEY, provider: str = "bfl") -> JournalEntry:
    return JournalEntry(key=key, provider=provider, label="poster/default/recolor",
                        accepted=Accepted(task_id="t-1", polling_url="https://api.eu4.bfl.ai/v1/"
                                          "get_result?id=t-1", api_base=API_BASE,
                                          cost=4, submitted_at=1_700_000_000.5))


def test_an_entry_is_recorded_found_and_removed(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal")
    journal.record(entry())
    assert journal.path(KEY) == tmp_path / "journal" / "ab" / f"{KEY}.json"
    assert journal.find(KEY, "bfl") == entry()
    assert list(journal.entries()) == [entry()]
    assert not list((tmp_path / "journal").rglob(".tmp-*"))
    journal.remove(KEY)
    journal.remove(KEY)  # twice is fine
    assert journal.find(KEY, "bfl") is None


def test_what_an_entry_holds(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.record(entry())
    assert json.loads(journal.path(KEY).read_text()) == {
        "layout": "journal-v1", "key": KEY, "provider": "bfl", "label": "poster/default/recolor",
        "task_id": "t-1", "polling_url": "https://api.eu4.bfl.ai/v1/get_result?id=t-1",
        "api_base": API_BASE, "cost": 4, "submitted_at": 1_700_000_000.5}


def test_another_providers_or_a_damaged_entry_is_not_used(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.record(entry(provider="preview"))
    assert journal.find(KEY, "bfl") is None
    journal.path(KEY).write_text("{not json")
    assert journal.find(KEY, "preview") is None
    assert list(journal.entries()) == []
    journal.path(KEY).write_text(json.dumps({**entry().to_json(), "key": "d" * 64}))
    assert journal.find(KEY, "bfl") is None  # an entry must be filed under its own key
