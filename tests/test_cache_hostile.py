"""The cache is input: a cache directory anyone could write to (shared, restored from a CI cache,
copied) is checked before anything in it is used, and maintenance never leaves it.

Every hit is a regular file (no link followed), an image of the format the step asks for by its
first bytes, whose sha256 is its entry's; anything else is a miss with a warning. ``verify
--fix``, ``gc`` and ``clear`` follow no link, and a cache whose own folders are links is refused
before anything is written or removed."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kontext_pipeline.errors import CacheError, OutputError
from kontext_pipeline.plan._plan import build_plan
from kontext_pipeline.providers._base import Provider
from kontext_pipeline.providers.bfl import MAX_RESULT_BYTES
from kontext_pipeline.recipe._spec import load_spec
from kontext_pipeline.runner._pipelines import RunStart, run_pipelines
from kontext_pipeline.store._cache import Cache, CacheEntry
from kontext_pipeline.store._cache_checks import MAX_OBJECT_BYTES
from tests.conftest import RunCli, WriteRecipe
from tests.test_cache import entry_for, png

SECRET = (  # a fake one
    "BFL_API_KEY=bfl_do_not_leak_0123456789\nDATABASE_URL=postgres://admin:hunter2@db\n")  # noqa: S105
RECIPE = """
    version: 1
    name: poster
    steps:
      - {id: paint, prompt: "A lighthouse at dawn"}
    outputs:
      poster: paint
"""
JPEG = b"\xff\xd8\xff\xe0"


def filled(run_cli: RunCli, write_recipe: WriteRecipe) -> tuple[Path, list[str], Cache]:
    """A recipe run once with the preview provider: (its folder, the run's arguments, the
    cache)."""
    recipe = write_recipe(RECIPE)
    work = recipe.parent
    args = ["run", str(recipe), "--provider", "preview", "--cache-dir", str(work / "cache"),
            "--out", str(work / "out")]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    return work, args, Cache(work / "cache")


def only_entry(cache: Cache) -> CacheEntry:
    ((_, entry),) = list(cache.entries())
    assert entry is not None
    return entry


def edit(cache: Cache, entry: CacheEntry, **changes: object) -> None:
    cache.entry_path(entry.key).write_text(json.dumps({**entry.to_json(), **changes}))


def everything_under(folder: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file())


# --- the attack that exported the environment --------------------------------------------------

def test_a_linked_object_with_an_entry_edited_to_txt_is_refused_never_exported(
        run_cli: RunCli, write_recipe: WriteRecipe) -> None:
    """An object made a link to a file of secrets (``/proc/self/environ`` in the original
    report), its entry edited to match (format ``txt``, the size and sha256 of the secret):
    before, the run exported the secrets as ``poster.txt`` and exited 0."""
    work, args, cache = filled(run_cli, write_recipe)
    entry = only_entry(cache)
    secret = work / "environ"
    secret.write_text(SECRET)
    digest = hashlib.sha256(SECRET.encode()).hexdigest()
    cache.object_path(digest).parent.mkdir(parents=True, exist_ok=True)
    cache.object_path(digest).symlink_to(secret)
    edit(cache, entry, object=digest, size=len(SECRET), format="txt")
    (work / "out" / ".kontext-export.json").unlink()  # the export is not skipped as unchanged
    warning = (f"cache entry {entry.key[:12]} is for format 'txt', not 'png'; the step runs "
               "again")

    frozen = run_cli(*args, "--frozen")
    assert frozen.exit_code == 3
    assert frozen.stderr == ("kontext-pipeline: --frozen: 1 step not in the cache; no "
                             f"provider was called:\n  poster / default / paint: {warning}\n")
    again = run_cli(*args)  # without --frozen: a miss, made again
    assert again.exit_code == 0, again.output
    assert f"poster/default/paint: warning: {warning}\n" in again.stderr
    assert sorted(p.name for p in (work / "out").iterdir()) == [
        ".kontext-export.json", "manifest.json", "poster.png", "report.html"]
    for leaked in ("bfl_do_not_leak", "hunter2"):
        assert leaked.encode() not in everything_under(work / "out")
        assert leaked not in frozen.output + again.output
    assert secret.read_text() == SECRET


def test_a_linked_object_is_not_followed_even_when_it_holds_the_right_bytes(
        tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    entry = cache.store(png(b"paid for"), entry_for(png(b"paid for")))
    elsewhere = tmp_path / "elsewhere.png"
    elsewhere.write_bytes(png(b"paid for"))
    cache.object_path(entry.object).unlink()
    cache.object_path(entry.object).symlink_to(elsewhere)
    assert cache.lookup(entry.key, "png").problem == (
        f"cache object {entry.object[:12]} of entry {entry.key[:12]} is not a regular file (a "
        "symbolic link?); the step runs again")
    with pytest.raises(ValueError, match=r"^is not a regular file \(a symbolic link\?\)$"):
        cache.read(entry)  # what an export reads
    assert cache.verify(fix=True) == [
        f"object {entry.object[:12]} is not a regular file (a symbolic link?)",
        f"entry {entry.key[:12]} points at a missing or damaged object {entry.object[:12]}"]
    assert elsewhere.read_bytes() == png(b"paid for")  # the link went, not what it pointed at
    assert not os.path.lexists(cache.object_path(entry.object))


ADDRESS_SPACE = 1 << 30  # 1 GiB: a regression fails the test, not the machine
LIMITED = ("import os, resource, sys; "
           "resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1]))); "
           "os.execv(sys.executable, [sys.executable, '-m', 'kontext_pipeline', *sys.argv[2:]])")


def implausible(key: str) -> str:
    return (f"cache entry {key[:12]} claims an object of a size no result has (1 to 50000000 "
            "bytes); the step runs again")


def test_an_entry_claiming_a_sparse_terabyte_object_is_a_miss_not_a_memory_error(
        run_cli: RunCli, write_recipe: WriteRecipe) -> None:
    """Its object a sparse file of the size the entry claims: before, the lookup asked for a
    terabyte at once (MemoryError, a traceback)."""
    pytest.importorskip("resource")  # the address-space limit is POSIX
    work, args, cache = filled(run_cli, write_recipe)
    entry = only_entry(cache)
    digest = hashlib.sha256(b"sparse").hexdigest()
    target = cache.object_path(digest)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(png(b""))  # a PNG by its first bytes, then a terabyte of holes
    os.truncate(target, 1 << 40)
    edit(cache, entry, object=digest, size=1 << 40)
    done = subprocess.run([sys.executable, "-c", LIMITED, str(ADDRESS_SPACE), *args], cwd=work,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert f"poster/default/paint: warning: {implausible(entry.key)}\n" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("size", [0, -1, MAX_OBJECT_BYTES + 1, 10**1000],
                         ids=["empty", "negative", "over", "a thousand digits"])
def test_an_entry_whose_size_no_result_has_is_damaged(tmp_path: Path, size: int) -> None:
    assert MAX_OBJECT_BYTES == MAX_RESULT_BYTES  # the largest result the provider downloads
    cache = Cache(tmp_path)
    entry = cache.store(png(b"x"), entry_for(png(b"x")))
    edit(cache, entry, size=size)
    assert cache.lookup(entry.key).problem == implausible(entry.key)
    assert list(cache.entries()) == [(cache.entry_path(entry.key), None)]


def test_a_pipe_for_an_object_is_a_miss_not_a_hang(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    entry = cache.store(png(b"x"), entry_for(png(b"x")))
    cache.object_path(entry.object).unlink()
    os.mkfifo(cache.object_path(entry.object))
    assert cache.lookup(entry.key).problem == (
        f"cache object {entry.object[:12]} of entry {entry.key[:12]} is not a regular file (a "
        "symbolic link?); the step runs again")


# --- swapped objects, entries pointed elsewhere ---------------------------------------------

def test_a_same_size_swap_is_a_miss_and_verify_reports_it(
        run_cli: RunCli, write_recipe: WriteRecipe) -> None:
    work, args, cache = filled(run_cli, write_recipe)
    entry = only_entry(cache)
    path = cache.object_path(entry.object)
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF  # same size, same first bytes: only the hash shows it
    path.write_bytes(bytes(data))
    warning = (f"cache object {entry.object[:12]} of entry {entry.key[:12]} does not match its "
               "sha256 (changed since it was stored); the step runs again")
    frozen = run_cli(*args, "--frozen")
    assert frozen.exit_code == 3
    assert f"poster / default / paint: {warning}" in frozen.stderr
    verify = run_cli("cache", "verify", "--cache-dir", str(work / "cache"))
    assert verify.exit_code == 1
    assert verify.stdout == (
        f"object {entry.object[:12]} does not match its hash\n"
        f"entry {entry.key[:12]} points at a missing or damaged object {entry.object[:12]}\n")


def test_an_entry_pointed_at_another_object_is_a_miss_and_verify_reports_it(
        tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    entry = cache.store(png(b"the image of this key"), entry_for(png(b"the image of this key")))
    other = cache.store(JPEG + b"another key's", entry_for(JPEG + b"another key's", key="b" * 64,
                                                           format="jpeg"))
    edit(cache, entry, object=other.object, size=other.size)  # still says png
    assert cache.lookup(entry.key, "png").problem == (
        f"cache object {other.object[:12]} of entry {entry.key[:12]} is not a PNG image (by its "
        "first bytes); the step runs again")
    planted = "f" * 64  # a file named as if it were an object, holding other bytes
    cache.object_path(planted).parent.mkdir(parents=True)
    cache.object_path(planted).write_bytes(png(b"the image of this key"))
    edit(cache, entry, object=planted)
    assert cache.lookup(entry.key, "png").problem == (
        f"cache object {planted[:12]} of entry {entry.key[:12]} does not match its sha256 "
        "(changed since it was stored); the step runs again")
    edit(cache, entry, object=other.object, size=other.size)
    assert cache.verify(fix=True) == [
        f"object {planted[:12]} does not match its hash",
        f"entry {entry.key[:12]} does not describe its object {other.object[:12]}, which is "
        "not a PNG image (by its first bytes)"]
    assert cache.verify() == []
    assert cache.lookup(other.key, "jpeg").entry == other


def test_the_step_asks_for_the_format_not_the_entry(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    entry = cache.store(JPEG + b"a photo", entry_for(JPEG + b"a photo", format="jpeg"))
    assert cache.lookup(entry.key, "jpeg").entry == entry
    assert cache.lookup(entry.key, "png").problem == (
        f"cache entry {entry.key[:12]} is for format 'jpeg', not 'png'; the step runs again")
    edit(cache, entry, format="png")  # the entry lies about its object
    assert cache.lookup(entry.key, "png").problem == (
        f"cache object {entry.object[:12]} of entry {entry.key[:12]} is not a PNG image (by its "
        "first bytes); the step runs again")


def test_entries_are_read_bounded_and_typed(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    entry = cache.store(png(b"x"), entry_for(png(b"x")))
    path = cache.entry_path(entry.key)
    path.write_text(json.dumps({**entry.to_json(), "request": {"prompt": "p" * 1_000_000}}))
    assert cache.lookup(entry.key).problem == (
        f"cache entry {entry.key[:12]} is larger than an entry can be (1000000 bytes); the "
        "step runs again")
    edit(cache, entry, size="9")
    assert cache.lookup(entry.key).problem == (
        f"cache entry {entry.key[:12]} is damaged (TypeError); the step runs again")
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere.json")
    (tmp_path / "elsewhere.json").write_text(json.dumps(entry.to_json()))
    assert cache.lookup(entry.key).problem == (
        f"cache entry {entry.key[:12]} is not a regular file (a symbolic link?); the step runs "
        "again")



def test_an_entry_nested_too_deeply_is_a_miss_with_a_warning(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    entry = cache.store(png(b"x"), entry_for(png(b"x")))
    cache.entry_path(entry.key).write_text("[" * 5000)  # 5 KB: RecursionError in json.loads
    assert cache.lookup(entry.key).problem == (
        f"cache entry {entry.key[:12]} is damaged (JSONDecodeError); the step runs again")
    assert [found for _, found in cache.entries()] == [None]

# --- maintenance never leaves the cache -----------------------------------------------------

VICTIMS = {"a" * 64: b"an object's name", "notes.json": b"{}", ".tmp-old": b"partial",
           "b" * 64 + "-320.json": b"{}"}


def victims(outside: Path) -> dict[str, bytes]:
    """Files outside the cache, named as a walk of the cache would look for them, old."""
    outside.mkdir()
    hours_ago = time.time() - 48 * 3600
    for name, data in VICTIMS.items():
        (outside / name).write_bytes(data)
        os.utime(outside / name, (hours_ago, hours_ago))
    return dict(VICTIMS)


def linked_folders(cache_dir: Path, outside: Path) -> list[str]:
    """A cache with a result, and a fan-out folder of each kind linked to ``outside``."""
    cache = Cache(cache_dir)
    cache.store(png(b"kept"), entry_for(png(b"kept"), created_at=time.time() - 48 * 3600))
    links = ["objects/aa", "entries/bb", "journal/cc", "thumbnails/dd"]
    for link in links:
        (cache.root / link).parent.mkdir(parents=True, exist_ok=True)
        (cache.root / link).symlink_to(outside, target_is_directory=True)
    return links


def contents(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir()}


@pytest.mark.parametrize("command", [["verify", "--fix"], ["gc", "--older-than", "0", "--yes"],
                                     ["clear", "--yes"]])
def test_maintenance_follows_no_link_out_of_the_cache(command: list[str], run_cli: RunCli,
                                                      tmp_path: Path) -> None:
    """Before, a linked folder inside the cache made ``verify --fix`` (and ``gc``) remove the
    files it pointed at that looked like objects, entries, thumbnails or leftovers."""
    outside = tmp_path / "outside"
    expected = victims(outside)
    links = linked_folders(tmp_path / "cache", outside)
    result = run_cli("cache", *command, "--cache-dir", str(tmp_path / "cache"))
    assert result.exit_code == 0, result.output
    assert contents(outside) == expected
    if command[0] == "verify":
        assert result.stdout == "".join(
            f"{link} is a symbolic link where a folder belongs (not followed) (removed)\n"
            for link in links) + "cache ok after removing 4\n"
    if command[0] != "gc":  # gc leaves them (and never enters them); verify --fix removes them
        assert not [link for link in links if os.path.lexists(tmp_path / "cache" / "v1" / link)]


@pytest.mark.parametrize("folder", ["v1", "v1/objects", "v1/entries", "v1/journal",
                                    "v1/thumbnails"])
def test_a_cache_whose_own_folders_are_links_is_refused(folder: str, run_cli: RunCli,
                                                        write_recipe: WriteRecipe) -> None:
    """Before, a linked ``objects/`` made a run write its images into the folder it pointed
    at."""
    recipe = write_recipe(RECIPE)
    work = recipe.parent
    outside = work / "outside"
    outside.mkdir()
    (work / "cache" / folder).parent.mkdir(parents=True, exist_ok=True)
    (work / "cache" / folder).symlink_to(outside, target_is_directory=True)
    refusal = (f"kontext-pipeline: cannot use the cache in {work / 'cache'}: {folder} is "
               "a symbolic link; the cache reads and writes only inside its own folders: make "
               "it a real folder (or remove it), or choose another --cache-dir; nothing was "
               "changed\n")
    for args in (["run", str(recipe), "--provider", "preview", "--out", str(work / "out")],
                 ["run", str(recipe), "--frozen", "--out", str(work / "out")],
                 ["cache", "verify", "--fix"], ["cache", "gc", "--older-than", "0", "--yes"],
                 ["cache", "clear", "--yes"], ["cache", "clear"], ["cache", "info"],
                 ["cache", "ls"]):
        result = run_cli(*args, "--cache-dir", str(work / "cache"))
        assert (result.exit_code, result.stderr) == (1, refusal), args
        assert list(outside.iterdir()) == []
    assert not (work / "out").exists()


def test_a_run_refuses_a_linked_fan_out_folder_before_it_pays(
        run_cli: RunCli, write_recipe: WriteRecipe) -> None:
    recipe = write_recipe(RECIPE)
    work = recipe.parent
    outside = work / "outside"
    outside.mkdir()
    (work / "cache" / "v1" / "objects").mkdir(parents=True)
    (work / "cache" / "v1" / "objects" / "5e").symlink_to(outside, target_is_directory=True)
    args = ["--cache-dir", str(work / "cache")]
    result = run_cli("run", str(recipe), "--provider", "preview", "--out", str(work / "out"),
                     *args)
    assert (result.exit_code, result.stderr) == (1, (
        f"kontext-pipeline: cannot use the cache in {work / 'cache'}: v1/objects/5e is "
        "a symbolic link or not a folder; the cache writes only inside its own folders: "
        "`kontext-pipeline cache verify --fix` removes it; nothing was changed\n"))
    assert list(outside.iterdir()) == []
    assert run_cli("cache", "verify", "--fix", *args).exit_code == 0
    assert run_cli("run", str(recipe), "--provider", "preview", "--out", str(work / "out"),
                   *args).exit_code == 0
    assert list(outside.iterdir()) == []


def test_a_store_through_a_linked_folder_is_refused(tmp_path: Path) -> None:
    """A link that appears while a run goes on (after its check at the start)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    cache = Cache(tmp_path / "cache")
    data = png(b"paid for")
    entry = entry_for(data)
    cache.object_path(entry.object).parent.parent.mkdir(parents=True)
    cache.object_path(entry.object).parent.symlink_to(outside, target_is_directory=True)
    with pytest.raises(CacheError) as caught:
        cache.store(data, entry)
    assert str(caught.value) == (
        f"cannot write to the cache in {tmp_path / 'cache'}: v1/objects/{entry.object[:2]} is "
        "a symbolic link, not a folder; the cache writes only inside its own folders: "
        "`kontext-pipeline cache verify --fix` removes such links, or choose another "
        "--cache-dir")
    assert list(outside.iterdir()) == []


def test_an_object_changed_after_its_lookup_is_not_exported(
        run_cli: RunCli, write_recipe: WriteRecipe) -> None:
    """The export reads the object once more, and checks the very bytes it writes."""
    work, _, cache = filled(run_cli, write_recipe)
    entry = only_entry(cache)
    plan = build_plan(load_spec(work / "recipe.yaml"), provider="preview")
    (work / "out" / "poster.png").unlink()

    def swap(_start: RunStart) -> None:  # after the lookups, before the export
        path = cache.object_path(entry.object)
        data = bytearray(path.read_bytes())
        data[-20] ^= 0xFF
        path.write_bytes(bytes(data))

    def no_provider() -> Provider:
        raise AssertionError("every step is cached")

    with pytest.raises(OutputError) as caught:
        run_pipelines([plan], cache=cache, out_dirs=[work / "out"], open_provider=no_provider,
                      on_start=swap)
    assert str(caught.value) == (
        f"cannot write {work / 'out' / 'poster.png'}: its cached image does not match its "
        "sha256 (changed since it was stored); `kontext-pipeline cache verify` finds damaged "
        "images")
    assert not (work / "out" / "poster.png").exists()
