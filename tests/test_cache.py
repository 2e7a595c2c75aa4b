"""The content-addressed cache: atomic, verifiable, and never serving a damaged image."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from kontext_pipeline._support import files
from kontext_pipeline.errors import CacheError
from kontext_pipeline.store._cache import (
    STALE_TEMPORARY_S,
    Cache,
    CacheEntry,
    CacheStats,
    default_cache_dir,
)

PNG = b"\x89PNG\r\n\x1a\n"  # what a PNG image begins with (what an object is checked for)


def png(body: bytes) -> bytes:
    """Bytes that begin as a PNG does (the cache checks an object's first bytes, not more)."""
    return PNG + body


def entry_for(data: bytes, key: str = "k" * 64, **changes: object) -> CacheEntry:
    fields: dict[str, object] = {
        "key": key, "object": hashlib.sha256(data).hexdigest(), "size": len(data),
        "format": "png", "width": 1, "height": 1, "provider": "preview",
        "model": "flux-kontext-pro", "seed": 1, "request_id": "r", "credits": 4,
        "duration_s": 1.0, "created_at": time.time(), "request": {"prompt": "p"}}
    fields.update(changes)
    return CacheEntry(**fields)  # type: ignore[arg-type]


def test_store_and_lookup(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    entry = cache.store(png(b"image bytes"), entry_for(png(b"image bytes")))
    assert cache.lookup(entry.key).entry == entry
    assert cache.read(entry) == png(b"image bytes")
    digest = hashlib.sha256(png(b"image bytes")).hexdigest()
    assert cache.object_path(digest) == tmp_path / "v1" / "objects" / digest[:2] / digest
    assert cache.entry_path(entry.key).is_file()
    assert not list(tmp_path.rglob(".tmp-*"))
    assert cache.stats().entries == 1


def test_a_missing_key_is_a_plain_miss(tmp_path: Path) -> None:
    lookup = Cache(tmp_path).lookup("a" * 64)
    assert (lookup.entry, lookup.problem) == (None, None)


def test_a_truncated_object_is_a_miss_with_a_warning(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    entry = cache.store(png(b"0123456789"), entry_for(png(b"0123456789")))
    cache.object_path(entry.object).write_bytes(png(b"01234"))
    lookup = cache.lookup(entry.key)
    assert lookup.entry is None
    assert lookup.problem == (f"cache object {entry.object[:12]} of entry {entry.key[:12]} is "
                              "13 bytes, expected 18 (truncated?); the step runs again")


def test_a_damaged_entry_is_a_miss_with_a_warning(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    entry = cache.store(png(b"x"), entry_for(png(b"x")))
    cache.entry_path(entry.key).write_text("{not json")
    assert cache.lookup(entry.key).problem == (
        f"cache entry {entry.key[:12]} is damaged (JSONDecodeError); the step runs again")
    cache.entry_path(entry.key).write_text(json.dumps({**entry.to_json(), "key": "b" * 64}))
    assert cache.lookup(entry.key).problem == (
        f"cache entry {entry.key[:12]} does not match its name; the step runs again")


def test_a_missing_object_is_a_miss_with_a_warning(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    entry = cache.store(png(b"x"), entry_for(png(b"x")))
    cache.object_path(entry.object).unlink()
    assert cache.lookup(entry.key).problem == (
        f"cache object {entry.object[:12]} of entry {entry.key[:12]} is missing; the step "
        "runs again")


def test_store_refuses_an_entry_that_does_not_describe_the_bytes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not describe these bytes"):
        Cache(tmp_path).store(b"abc", entry_for(b"abd"))


def test_verify_finds_and_fixes_corruption_of_the_same_size(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    good = cache.store(png(b"good"), entry_for(png(b"good"), key="a" * 64))
    bad = cache.store(png(b"flip"), entry_for(png(b"flip"), key="b" * 64))
    cache.object_path(bad.object).write_bytes(png(b"flop"))  # same size: only a hash shows it
    assert cache.lookup(bad.key).problem == (
        f"cache object {bad.object[:12]} of entry {bad.key[:12]} does not match its sha256 "
        "(changed since it was stored); the step runs again")
    problems = cache.verify()
    assert problems == [f"object {bad.object[:12]} does not match its hash",
                        f"entry {bad.key[:12]} points at a missing or damaged object "
                        f"{bad.object[:12]}"]
    assert cache.verify(fix=True) == problems
    assert cache.verify() == []
    assert cache.lookup(bad.key).entry is None
    assert cache.lookup(good.key).entry == good


def test_storing_again_repairs_a_damaged_object_of_the_same_name(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    entry = cache.store(png(b"flip"), entry_for(png(b"flip"), key="a" * 64))
    # a step of another key has these bytes
    cache.object_path(entry.object).write_bytes(png(b"flop"))
    cache.store(png(b"flip"), entry_for(png(b"flip"), key="b" * 64))
    assert cache.read(entry) == png(b"flip")
    assert cache.verify() == []


def test_remove_entries_by_reachability_and_age(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    old = cache.store(png(b"old"), entry_for(png(b"old"), key="a" * 64,
                                             created_at=time.time() - 86400))
    new = cache.store(png(b"new"), entry_for(png(b"new"), key="b" * 64))
    assert cache.remove_entries(older_than=3600) == 1
    assert cache.lookup(old.key).entry is None
    assert not cache.object_path(old.object).exists()
    assert cache.remove_entries(keep={new.key}) == 0
    assert cache.remove_entries(keep=set()) == 1
    assert cache.stats().objects == 0


def test_gc_spares_an_object_whose_entry_another_run_is_about_to_write(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    fresh = entry_for(png(b"fresh"))
    stale = entry_for(png(b"stale"), key="c" * 64)
    for data, entry in ((png(b"fresh"), fresh), (png(b"stale"), stale)):
        path = cache.object_path(entry.object)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)  # an object stored, its entry not written (yet)
    hours_ago = time.time() - 2 * 3600
    os.utime(cache.object_path(stale.object), (hours_ago, hours_ago))
    assert cache.remove_entries(keep=set()) == 0
    assert cache.object_path(fresh.object).exists()
    assert not cache.object_path(stale.object).exists()


def test_clear(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    cache.store(png(b"x"), entry_for(png(b"x")))
    cache.clear()
    assert cache.stats().entries == 0


def test_an_unwritable_cache_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(CacheError) as caught:
        Cache(blocker).store(png(b"x"), entry_for(png(b"x")))
    assert str(caught.value) == (f"cannot write to the cache in {blocker}: Not a directory; "
                                 "check that it is a writable directory, or choose another "
                                 "--cache-dir")


def test_leftovers_of_interrupted_writes_are_ignored_then_removed_once_stale(
        tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    entry = cache.store(png(b"x"), entry_for(png(b"x")))
    old = cache.object_path(entry.object).parent / ".tmp-killed"
    young = cache.entry_path(entry.key).parent / ".tmp-writing"
    old.write_bytes(b"partial")
    young.write_bytes(b"{")
    stale = time.time() - STALE_TEMPORARY_S - 60
    os.utime(old, (stale, stale))
    assert cache.lookup(entry.key).entry == entry
    assert cache.stats() == CacheStats(entries=1, objects=1, bytes=9)
    assert cache.leftovers() == [old]
    problem = (f"temporary file objects/{entry.object[:2]}/.tmp-killed is left over from an "
               "interrupted write")
    assert cache.verify() == [problem]
    assert cache.verify(fix=True) == [problem]
    assert not old.exists()
    assert young.exists()  # it may be a write in progress (here or on another machine)
    assert cache.verify() == []
    os.utime(young, (stale, stale))
    assert cache.remove_leftovers() == 1
    assert not young.exists()
    assert cache.lookup(entry.key).entry == entry


def test_default_location(tmp_path: Path) -> None:
    assert default_cache_dir({"KONTEXT_CACHE_DIR": str(tmp_path)}) == tmp_path
    assert default_cache_dir({}).name == "kontext-pipeline"


def test_written_files_have_ordinary_permissions(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    entry = cache.store(png(b"x"), entry_for(png(b"x")))
    mode = cache.object_path(entry.object).stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_gc_removes_the_thumbnails_of_the_objects_it_removes(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    kept = cache.store(png(b"kept"), entry_for(png(b"kept"), key="a" * 64))
    gone = cache.store(png(b"gone"), entry_for(png(b"gone"), key="b" * 64))
    for entry in (kept, gone):
        thumbnail = cache.root / "thumbnails" / entry.object[:2] / f"{entry.object}-320.json"
        thumbnail.parent.mkdir(parents=True, exist_ok=True)
        thumbnail.write_text("{}")
    assert cache.remove_entries(keep={kept.key}) == 1
    assert [p.name.split("-")[0] for p in (cache.root / "thumbnails").glob("*/*.json")] == [
        kept.object]


def test_an_object_is_on_disk_before_its_entry_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The order of the flushes and renames of a store (watched, not replaced): the object's
    bytes and name are flushed before its entry is written, and the entry's before the store
    returns."""
    steps: list[str] = []
    flush, rename = files._fsync, os.replace

    def flushing(path: Path | str) -> None:
        steps.append(f"flush {Path(path).relative_to(tmp_path).as_posix()}")
        flush(path)

    def renaming(source: str, target: str | Path) -> None:
        steps.append(f"rename to {Path(target).relative_to(tmp_path).as_posix()}")
        rename(source, target)

    monkeypatch.setattr(files, "_fsync", flushing)
    monkeypatch.setattr(os, "replace", renaming)
    entry = Cache(tmp_path).store(png(b"paid for"), entry_for(png(b"paid for")))
    where = f"v1/objects/{entry.object[:2]}"
    steps = [step if "/.tmp-" not in step else step.split("/.tmp-")[0] + "/<temporary>"
             for step in steps]
    assert steps == [f"flush {where}/<temporary>", f"rename to {where}/{entry.object}",
                     f"flush {where}",
                     "flush v1/entries/kk/<temporary>",
                     f"rename to v1/entries/kk/{'k' * 64}.json", "flush v1/entries/kk"]
