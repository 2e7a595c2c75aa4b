"""The request journal: accepted tasks are written durably and found again, never a secret."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kontext_pipeline.claims import LOCKS
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


# --- claims: one run at a time makes a key's image ------------------------------------------

HOLDER = """
import sys, time
from pathlib import Path
from kontext_pipeline.journal import Journal
claim = Journal(Path(sys.argv[1])).claim(sys.argv[2])
print("held" if claim is not None and claim.exclusive else "not held", flush=True)
time.sleep(120)
"""


def test_a_claim_is_held_by_one_at_a_time_and_its_file_goes_with_it(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal")
    claim = journal.claim(KEY)
    assert claim is not None
    assert claim.exclusive
    assert claim.path == tmp_path / "journal" / "ab" / f"{KEY}.lock"
    assert journal.claim(KEY) is None  # another open file, even in this process, must wait
    assert journal.claim("d" * 64) is not None  # other keys are free
    claim.release()
    claim.release()  # twice is fine
    assert not claim.path.exists()
    again = journal.claim(KEY)
    assert again is not None
    again.release()
    assert list(journal.entries()) == []  # claims are not journal entries


@pytest.mark.skipif(not LOCKS, reason="claims are exclusive only where fcntl exists")
def test_the_claim_of_a_killed_process_is_free_and_its_leftover_file_is_swept(
        tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(journal.directory), KEY],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        assert journal.claim(KEY) is None
        assert journal.sweep_claims() == 0  # held: kept
    finally:
        holder.kill()
        holder.communicate(timeout=60)
    leftover = journal.directory / "ab" / f"{KEY}.lock"
    assert leftover.exists()  # killed while holding it: the file stays, the lock does not
    claim = journal.claim(KEY)
    assert claim is not None
    assert claim.exclusive
    claim.release()
    leftover.touch()  # another one left behind, nobody holding it
    assert journal.sweep_claims() == 1
    assert not leftover.exists()
