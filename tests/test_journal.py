"""The request journal: accepted tasks are written durably and found again, never a secret."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kontext_pipeline.plan._plan import build_plan
from kontext_pipeline.plan._resolution import resolve
from kontext_pipeline.providers._base import Accepted, Provider
from kontext_pipeline.recipe._spec import load_spec
from kontext_pipeline.runner._journal import Journal, JournalEntry
from kontext_pipeline.runner._pipelines import RunStart, run_pipelines
from kontext_pipeline.store._cache import Cache
from kontext_pipeline.store._claims import LOCKS
from tests.conftest import WriteRecipe

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
from kontext_pipeline.runner._journal import Journal
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


class StoppedAtStartError(Exception):
    """Raised by the test's on_start: the run stops there, before any request."""


def first_line(recipe: Path, cache: Path, out: Path) -> str:
    """What a run of ``recipe`` says before any request (its first line)."""
    plan = build_plan(load_spec(recipe), provider="bfl")

    def stop(start: RunStart) -> None:
        raise StoppedAtStartError(start.describe())

    def no_provider() -> Provider:
        raise AssertionError("the run stops before it opens a provider")

    with pytest.raises(StoppedAtStartError) as said:
        run_pipelines([plan], cache=Cache(cache), out_dirs=[out], open_provider=no_provider,
                      on_start=stop)
    return str(said.value)


@pytest.mark.skipif(not LOCKS, reason="claims are not exclusive on this platform")
def test_a_task_another_live_run_is_collecting_is_not_called_interrupted(
        write_recipe: WriteRecipe, tmp_path: Path) -> None:
    recipe = write_recipe("""
        version: 1
        name: shared
        matrix:
          n: [1, 2, 3]
        steps:
          - {id: paint, prompt: "Paint stripe number {{ n }}"}
    """)
    cache, out = tmp_path / "cache", tmp_path / "out"
    plan = build_plan(load_spec(recipe), provider="bfl")
    keys = [r.key for r in resolve(plan, Cache(cache)) if r.key is not None]
    journal = Journal(Cache(cache).root / "journal")
    for key in keys[:2]:
        journal.record(entry(key))
    live = journal.claim(keys[0])  # another run, alive, holds it: it is collecting that task
    assert live is not None
    try:
        assert first_line(recipe, cache, out) == (
            "3 steps: 0 cached, 1 to run, 1 to collect from an interrupted run, 1 being made "
            "by another run, expected cost 4 credits ($0.04)")
    finally:
        live.release()
    assert first_line(recipe, cache, out) == (
        "3 steps: 0 cached, 1 to run, 2 to collect from an interrupted run, expected cost 4 "
        "credits ($0.04)")
