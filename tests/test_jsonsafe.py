"""A JSON document nested deeper than the recursion limit (``"[" * 5000`` is 5 KB) is as
damaged as any other that is not JSON: a journal entry, a thumbnail record, the export state or
a manifest in --out of that kind is passed over or named in one clear message, never a
traceback (``json.loads`` raises RecursionError for it, which no ``except ValueError`` catches).
The cache entry and the API's answers are in tests/test_cache_hostile.py and
tests/providers/test_bfl_answers.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kontext_pipeline._support.jsonsafe import loads
from kontext_pipeline.outputs._thumbnails import ThumbnailStore
from kontext_pipeline.runner._journal import Journal
from tests.conftest import RunCli, WriteRecipe
from tests.test_cache_hostile import RECIPE
from tests.test_journal import KEY, entry

DEEP = "[" * 5000


@pytest.mark.parametrize("data", [DEEP, DEEP.encode(), "[" * 5000 + "]" * 5000])
def test_a_document_nested_too_deeply_is_a_json_decode_error(data: str | bytes) -> None:
    with pytest.raises(json.JSONDecodeError) as caught:
        loads(data)
    assert str(caught.value) == "nested too deeply: line 1 column 1 (char 0)"


def test_a_document_nested_within_the_limit_is_read() -> None:
    assert loads(b'{"a": [[[1]]]}') == {"a": [[[1]]]}
    nested: list[object] = []
    for _ in range(49):
        nested = [nested]
    assert loads("[" * 50 + "]" * 50) == nested


def test_a_journal_entry_nested_too_deeply_is_passed_over(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.record(entry())
    journal.record(entry(key="cd" + "e" * 62))
    journal.path(KEY).write_text(DEEP)
    assert journal.find(KEY, "bfl") is None
    assert [found.key for found in journal.entries()] == ["cd" + "e" * 62]


def test_a_thumbnail_record_nested_too_deeply_is_made_again(tmp_path: Path) -> None:
    store = ThumbnailStore(tmp_path)
    path = store.path("ab" * 32)
    path.parent.mkdir(parents=True)
    path.write_text(DEEP)
    assert store.get("ab" * 32) is None


def test_a_manifest_and_export_state_nested_too_deeply_do_not_end_a_run(
        run_cli: RunCli, write_recipe: WriteRecipe) -> None:
    recipe = write_recipe(RECIPE)
    work = recipe.parent
    out = work / "out"
    out.mkdir()
    (out / "manifest.json").write_text(DEEP)
    (out / ".kontext-export.json").write_text(DEEP)
    args = ["run", str(recipe), "--provider", "preview", "--cache-dir", str(work / "cache"),
            "--out", str(out)]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "manifest.json").read_bytes())["pipeline"] == "poster"
    assert isinstance(json.loads((out / ".kontext-export.json").read_bytes()), dict)


@pytest.mark.invalid_manifests
def test_report_names_a_manifest_nested_too_deeply(run_cli: RunCli, tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(DEEP)
    result = run_cli("report", str(tmp_path), "--cache-dir", str(tmp_path / "cache"))
    assert result.exit_code == 2
    assert result.stderr == (f"kontext-pipeline: {tmp_path / 'manifest.json'} is damaged (not "
                             "JSON: nested too deeply at line 1, column 1); run the recipe "
                             "again to rewrite it\n")
