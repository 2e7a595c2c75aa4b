"""The cache under stress: concurrent runs of overlapping recipes on one cache directory, writers
killed in the middle of a write, and a full disk. No damaged entry is ever served, and the next
run makes again what is missing."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from kontext_pipeline.outputs._provenance import read_provenance
from kontext_pipeline.store._cache import STALE_TEMPORARY_S, Cache
from tests.conftest import RunCli

TIMEOUT = 120  # seconds any one command may take on a loaded machine before the test fails


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def recipe_dir(directory: Path) -> Path:
    """A fresh folder holding the tiny input image every recipe here edits."""
    directory.mkdir(parents=True)
    Image.new("RGB", (16, 12), (200, 40, 40)).save(directory / "photo.png")
    return directory


def generated_sha256(path: Path) -> str | None:
    """The sha256 of an exported image as generated (without the provenance export adds)."""
    found = read_provenance(path.read_bytes())
    assert found is not None, path
    return found.output_sha256


def start(*args: str, cwd: Path, prefix: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    """``kontext-pipeline ARGS`` in a process of its own (``prefix`` runs it through a
    wrapper)."""
    command = [sys.executable, *prefix] if prefix else [sys.executable, "-m", "kontext_pipeline"]
    return subprocess.Popen([*command, *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@dataclass(frozen=True)
class Finished:
    code: int
    stdout: str
    stderr: str

    def manifest(self) -> dict[str, Any]:
        assert self.code == 0, self.stderr
        data: dict[str, Any] = json.loads(self.stdout)
        return data


def finish(process: subprocess.Popen[str]) -> Finished:
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        pytest.fail(f"still running after {TIMEOUT} s:\n{stderr}")
    return Finished(process.returncode, stdout, stderr)


def run(recipe: Path, cache: Path, out: Path, *options: str,
        prefix: tuple[str, ...] = ()) -> Finished:
    return finish(start("run", str(recipe), "--provider", "preview", "--cache-dir", str(cache),
                        "--out", str(out), "--json", *options, cwd=recipe.parent,
                        prefix=prefix))


def temporaries(root: Path) -> list[Path]:
    return sorted(root.rglob(".tmp-*"))


def assert_nothing_damaged_is_served(cache: Cache) -> None:
    """Every object hashes to its name, every entry's object is there, and every lookup that
    hits gives bytes that hash to the entry's object."""
    assert cache.verify() == []
    for path, entry in cache.entries():
        assert entry is not None, path
        hit = cache.lookup(entry.key).entry
        assert hit == entry
        assert hashlib.sha256(cache.read(hit)).hexdigest() == hit.object


def identity(step: dict[str, Any]) -> str:
    """What makes a step's image (the cache key's ingredients), from its manifest record."""
    return json.dumps([step["model"], step["prompt"], step["seed"], step["params"],
                       step["inputs_sha256"]], sort_keys=True)


# --- concurrent runs ---------------------------------------------------------------------------

OVERLAPPING = {  # the same first two steps everywhere; overlap-2's red variant is overlap-0
    "overlap-0": ("vars: {color: red}\n", "Frame it in gold", "png"),
    "overlap-1": ("vars: {color: red}\n", "Frame it in silver", "png"),
    "overlap-2": ("matrix:\n  color: [red, blue]\n", "Frame it in gold", "png"),
    "overlap-3": ("vars: {color: red}\n", "Relight it at dusk", "jpeg"),
}


def overlapping_recipe(directory: Path, name: str) -> Path:
    head, finish_prompt, output_format = OVERLAPPING[name]
    return write(directory / f"{name}.yaml", f"""
version: 1
name: {name}
seed: 5
inputs: {{photo: photo.png}}
{head}steps:
  - {{id: paint, image: photo, prompt: "Paint the car {{{{ color }}}}"}}
  - {{id: sign, prompt: "Replace the sign text with OPEN"}}
  - {{id: finish, prompt: "{finish_prompt}", output_format: {output_format}}}
outputs: {{painted: paint, signed: sign, final: finish}}
""")


@pytest.mark.parametrize("count", [2, 4])
def test_concurrent_runs_of_overlapping_recipes_share_one_cache(count: int, run_cli: RunCli,
                                                                tmp_path: Path) -> None:
    recipes = recipe_dir(tmp_path / "recipes")
    cache = tmp_path / "cache"
    names = sorted(OVERLAPPING)[:count]
    processes = [start("run", str(overlapping_recipe(recipes, name)), "--provider", "preview",
                       "--cache-dir", str(cache), "--out", str(tmp_path / "out" / name), "--json",
                       cwd=recipes) for name in names]
    manifests = {name: finish(process).manifest()
                 for name, process in zip(names, processes, strict=True)}

    made: dict[str, set[str]] = {}  # what each distinct step gave, in every run that had it
    records = 0
    for name, manifest in manifests.items():
        for step in manifest["steps"]:
            assert step["status"] == "done", step
            made.setdefault(identity(step), set()).add(step["output_sha256"])
            exported = tmp_path / "out" / name / step["output"]
            assert generated_sha256(exported) == step["output_sha256"]
            records += 1
    assert records > len(made)  # the recipes do overlap: some steps ran in several processes
    assert all(len(outputs) == 1 for outputs in made.values())  # identical steps, same bytes
    assert Cache(cache).stats().entries == len(made)
    assert Cache(cache).stats().objects == len({o for outputs in made.values() for o in outputs})
    verify = run_cli("cache", "verify", "--cache-dir", str(cache))
    assert (verify.exit_code, verify.stdout) == (0, "cache ok\n")
    assert temporaries(tmp_path) == []


# --- killed writers ----------------------------------------------------------------------------

WRITER = """
import hashlib, sys, time
from pathlib import Path
from kontext_pipeline.store._cache import Cache, CacheEntry

cache, round_, size = Cache(Path(sys.argv[1])), int(sys.argv[2]), int(sys.argv[3])
png = b"\\x89PNG\\r\\n\\x1a\\n"  # they begin as PNG images do (what a lookup checks)
payloads = [png + f"round {round_} object {i}:".encode().ljust(size - len(png), bytes([i]))
            for i in range(4)]
digests = [hashlib.sha256(p).hexdigest() for p in payloads]
for n in range(2000):
    i = n % 4
    cache.store(payloads[i], CacheEntry(
        key=hashlib.sha256(f"key {round_} {i}".encode()).hexdigest(), object=digests[i],
        size=size, format="png", width=1, height=1, provider="preview",
        model="flux-kontext-pro", seed=i, request_id=f"{round_}/{i}", credits=4,
        duration_s=0.0, created_at=time.time()))
    print(i, flush=True)
"""
ROUNDS = 5
OBJECT_SIZE = 2 << 20
STOPS = 400  # at most this many looks per round for a write in progress


def kill_in_the_middle_of_a_write(process: subprocess.Popen[str], cache_dir: Path,
                                  rng: random.Random) -> bool:
    """Stop the writer at random moments until one finds a write in progress (a new temporary
    file), then SIGKILL it there. Whether a write was in progress when it died."""
    before = set(temporaries(cache_dir))
    for _ in range(STOPS):
        time.sleep(rng.uniform(0, 0.003))
        process.send_signal(signal.SIGSTOP)
        os.waitpid(process.pid, os.WUNTRACED)  # returns once it has stopped
        if set(temporaries(cache_dir)) - before:
            process.kill()
            return True
        process.send_signal(signal.SIGCONT)
    process.kill()
    return False


def test_a_writer_killed_in_the_middle_of_a_write_damages_nothing(run_cli: RunCli,
                                                                  tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    cache = Cache(cache_dir)
    rng = random.Random(6)
    for round_ in range(ROUNDS):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(cache_dir), str(round_),
                                   str(OBJECT_SIZE)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            assert writer.stdout is not None
            first = writer.stdout.readline()  # one object stored: it is writing in a loop
            caught = bool(first) and kill_in_the_middle_of_a_write(writer, cache_dir, rng)
        finally:
            writer.kill()
            rest, errors = writer.communicate(timeout=TIMEOUT)
        assert first, errors
        assert writer.returncode == -signal.SIGKILL
        assert caught, f"round {round_}: no write was in progress in {STOPS} looks"
        assert_nothing_damaged_is_served(cache)
        for i in {int(line) for line in [first, *rest.split()]}:  # what it said it stored
            key = hashlib.sha256(f"key {round_} {i}".encode()).hexdigest()
            assert cache.lookup(key).entry is not None

    leftovers = temporaries(cache_dir)
    assert len(leftovers) >= ROUNDS  # each kill left the file it was writing
    assert {p.name for p in cache.objects()}.isdisjoint(p.name for p in leftovers)
    assert cache.leftovers() == []  # too young to tell from a write in progress: kept
    assert cache.remove_leftovers() == 0

    stale = time.time() - STALE_TEMPORARY_S - 60
    for path in leftovers:
        os.utime(path, (stale, stale))
    verify = run_cli("cache", "verify", "--cache-dir", str(cache_dir))
    assert verify.exit_code == 1
    assert verify.stdout.splitlines() == [
        f"temporary file {p.relative_to(cache_dir / 'v1').as_posix()} is left over from an "
        "interrupted write" for p in leftovers]
    assert verify.stderr == (f"kontext-pipeline: {len(leftovers)} damaged items in the cache; "
                             "`kontext-pipeline cache verify --fix` removes them\n")
    gc = run_cli("cache", "gc", "--older-than", "3650", "--cache-dir", str(cache_dir))
    assert gc.stdout == (f"removed 0 entries\nremoved {len(leftovers)} temporary files of "
                         "interrupted writes\n")
    assert temporaries(cache_dir) == []
    assert run_cli("cache", "verify", "--cache-dir", str(cache_dir)).stdout == "cache ok\n"
    assert_nothing_damaged_is_served(cache)


# --- a run killed, or stopped by a full disk, and the run after it ----------------------------

CHAIN = """
version: 1
name: chain
seed: 9
inputs: {photo: photo.png}
matrix:
  color: [red, blue, green]
steps:
  - {id: paint, image: photo, prompt: "Paint the car {{ color }}"}
  - {id: sign, prompt: "Replace the sign text with OPEN"}
  - {id: frame, prompt: "Frame it in gold"}
outputs: {painted: paint, signed: sign, framed: frame}
"""


@dataclass(frozen=True)
class Reference:
    """The chain recipe, and what an undisturbed run of it on a fresh cache made."""

    recipe: Path
    manifest: dict[str, Any]
    out: Path

    def outputs(self) -> dict[str, str]:
        return {s["output"]: s["output_sha256"] for s in self.manifest["steps"]}

    def size(self, step: str, variant: str = "color=red") -> int:
        record = next(s for s in self.manifest["steps"]
                      if (s["variant"], s["step"]) == (variant, step))
        output: str = record["output"]
        return (self.out / output).stat().st_size


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    base = tmp_path_factory.mktemp("reference")
    recipe = write(recipe_dir(base / "recipes") / "chain.yaml", CHAIN)
    done = run(recipe, base / "cache", base / "out")
    return Reference(recipe, done.manifest(), base / "out")


def assert_repaired(done: Finished, out: Path, reference: Reference, *, hits: int,
                    variant: str | None = None) -> None:
    """The run made what was missing, took the rest from the cache, and gave the same bytes as
    an undisturbed run."""
    manifest = done.manifest()
    steps = len(manifest["steps"])
    assert manifest["totals"] == {"steps": steps, "cache_hits": hits, "calls": steps - hits,
                                  "credits": 4 * (steps - hits), "failed": 0}
    expected = {path: digest for path, digest in reference.outputs().items()
                if variant is None or path.startswith(f"{variant}/")}
    assert {s["output"]: s["output_sha256"] for s in manifest["steps"]} == expected
    for path, digest in expected.items():
        assert generated_sha256(out / path) == digest


def test_the_run_after_a_killed_one_makes_what_is_missing(reference: Reference,
                                                           tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    cache = Cache(cache_dir)
    process = start("run", str(reference.recipe), "--provider", "preview", "--cache-dir",
                    str(cache_dir), "--out", str(tmp_path / "killed"), cwd=tmp_path)
    deadline = time.monotonic() + TIMEOUT
    while cache.stats().entries < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    process.kill()
    finish(process)
    assert 2 <= cache.stats().entries < 9  # killed in the middle of the run
    assert_nothing_damaged_is_served(cache)
    # What a kill between the two writes of a store leaves (the object, not its entry), and
    # what a kill before a rename leaves (a temporary file), for a first step:
    keys = keys_of(reference)
    first = next(key for (_, step), key in keys.items()
                 if step == "paint" and cache.lookup(key).entry is not None)
    entry = cache.lookup(first).entry
    assert entry is not None
    cache.entry_path(first).unlink()
    leftover = cache.object_path(entry.object).parent / ".tmp-killed"
    leftover.write_bytes(b"\x89PNG partial")

    # Each step whose entry is there is a hit, even below the step made again (it gives the
    # same bytes, so the same keys downstream); every other step is made again.
    missing = {step for step, key in keys.items() if cache.lookup(key).entry is None}
    done = run(reference.recipe, cache_dir, tmp_path / "out")
    assert_repaired(done, tmp_path / "out", reference, hits=len(keys) - len(missing))
    assert {(s["variant"], s["step"]) for s in done.manifest()["steps"]
            if s["cache"] == "miss"} == missing
    assert cache.stats().entries == 9
    assert_nothing_damaged_is_served(cache)
    assert leftover.exists()  # young: it could be a write in progress, so it is left alone


def test_a_write_error_ends_the_run_cleanly_and_the_next_run_repairs(reference: Reference,
                                                                     tmp_path: Path) -> None:
    """A cache that refuses large files (a file-size limit: works everywhere, no privileges)."""
    painted, signed = reference.size("paint"), reference.size("sign")
    assert painted < signed  # each step frames the last: the second object is the larger
    limit = (painted + signed) // 2
    cache_dir = tmp_path / "cache"
    limited = ("-c", "import os, resource, sys; "
               "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]),) * 2); "
               "os.execv(sys.executable, [sys.executable, '-m', 'kontext_pipeline', "
               "*sys.argv[2:]])", str(limit))
    failed = run(reference.recipe, cache_dir, tmp_path / "out", "--var", "color=red",
                 prefix=limited)
    assert failed.code == 1
    assert failed.stderr.splitlines()[-1] == (
        f"kontext-pipeline: cannot write to the cache in {cache_dir}: File too large; check "
        "that it is a writable directory, or choose another --cache-dir")
    assert "Traceback" not in failed.stderr
    assert_after_a_failed_write(Cache(cache_dir), tmp_path)

    done = run(reference.recipe, cache_dir, tmp_path / "out", "--var", "color=red")
    assert_repaired(done, tmp_path / "out", reference, hits=1, variant="color=red")
    assert_nothing_damaged_is_served(Cache(cache_dir))


def assert_after_a_failed_write(cache: Cache, tmp_path: Path) -> None:
    """The first step is cached whole; the one whose write failed left nothing behind."""
    assert_nothing_damaged_is_served(cache)
    assert cache.stats().entries == 1
    assert temporaries(tmp_path) == []
    (_, entry), = cache.entries()
    assert entry is not None
    assert entry.request["prompt"] == "Paint the car red"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs of its own, where mounting one is permitted (else the test is skipped)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount, umount = shutil.which("mount"), shutil.which("umount")
    if mount is None or umount is None:
        pytest.skip("no mount command here")
    mounted = subprocess.run([mount, "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip().splitlines()[0]}")
    try:
        yield disk
    finally:
        subprocess.run([umount, str(disk)], check=True)


def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` with one file, so that only ``leave`` bytes (rounded up to whole blocks)
    stay free."""
    stats = os.statvfs(disk)
    blocks = -(-leave // stats.f_frsize)
    filler = disk / "filler"
    filler.write_bytes(bytes((stats.f_bavail - blocks) * stats.f_frsize))
    assert os.statvfs(disk).f_bavail == blocks
    return filler


def test_a_full_disk_ends_the_run_cleanly_and_the_next_run_repairs(
    reference: Reference, small_disk: Path, tmp_path: Path
) -> None:
    """A real ENOSPC: room for the first step's object and entry, not for the second's."""
    painted, signed = reference.size("paint"), reference.size("sign")
    block = os.statvfs(small_disk).f_frsize
    filler = fill(small_disk, painted + block + signed // 2)  # + one block for the entry
    cache_dir = small_disk / "cache"
    failed = run(reference.recipe, cache_dir, tmp_path / "out", "--var", "color=red")
    assert failed.code == 1
    assert failed.stderr.splitlines()[-1] == (
        f"kontext-pipeline: cannot write to the cache in {cache_dir}: No space left on device; "
        "free some space there (`kontext-pipeline cache gc` removes what your recipes no "
        "longer reach) or choose another --cache-dir")
    assert "Traceback" not in failed.stderr
    assert_after_a_failed_write(Cache(cache_dir), tmp_path)
    frozen = run(reference.recipe, cache_dir, tmp_path / "out", "--var", "color=red", "--frozen")
    assert frozen.code == 3
    assert frozen.stderr.splitlines()[-3:] == [
        "kontext-pipeline: --frozen: 2 steps not in the cache; no provider was called:",
        "  chain / color=red / sign: no cached result for key "
        f"{keys_of(reference)['color=red', 'sign'][:12]}",
        "  chain / color=red / frame: its input 'sign' is not cached"]

    filler.unlink()
    done = run(reference.recipe, cache_dir, tmp_path / "out", "--var", "color=red")
    assert_repaired(done, tmp_path / "out", reference, hits=1, variant="color=red")
    assert_nothing_damaged_is_served(Cache(cache_dir))


def keys_of(reference: Reference) -> dict[tuple[str, str], str]:
    """The cache key of each (variant, step), from the reference run's cache."""
    by_object = {e.object: e.key for _, e in Cache(reference.out.parent / "cache").entries()
                 if e is not None}
    return {(s["variant"], s["step"]): by_object[s["output_sha256"]]
            for s in reference.manifest["steps"]}
