"""The lock when several hands write it: two runs of one recipe at once keep each other's
records; a lock git merged with conflicts is rewritten by ``run --frozen --relock`` from both
sides, without the cache; and the blocking work of a run (reading locks, hashing and exporting
files) is done off the event loop, whose thread alone hears the run's notes."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from click.testing import Result

from kontext_pipeline import build_plan, load_recipe
from kontext_pipeline.server._run import BackgroundServer
from kontext_pipeline.store._cache import Cache, CacheEntry, Lookup
from kontext_pipeline.store._lock import read_lock
from tests.bfl_helpers import KEY, provider_for
from tests.conftest import RunCli, Start, WriteRecipe
from tests.test_single_flight import AT_THE_SIGNAL, finish, start

GRID = """
    version: 1
    name: grid
    inputs: {photo: photo.png}
    matrix:
      color: [COLORS]
    steps:
      - {id: paint, image: photo, prompt: "Paint the car {{ color }}"}
      - {id: frame, prompt: "Add a {{ color }} frame"}
"""


def grid(*colors: str) -> str:
    return GRID.replace("COLORS", ", ".join(colors))


class Runner:
    """Runs the CLI against one server, one cache and ``out`` beside the recipe."""

    def __init__(self, run_cli: RunCli, server: BackgroundServer, tmp_path: Path) -> None:
        self.run_cli, self.server = run_cli, server
        self.cache, self.out = tmp_path / "cache", tmp_path / "out"

    def __call__(self, recipe: Path, *args: str, key: str = KEY) -> Result:
        return self.run_cli("run", str(recipe), "--provider", "bfl", "--api-base",
                            self.server.url, "--cache-dir", str(self.cache), "--out",
                            str(self.out), *args, env={"BFL_API_KEY": key})

    def submitted(self) -> int:
        return sum(self.server.state.submits.values())


@pytest.fixture
def runner(run_cli: RunCli, bfl_server: Start, tmp_path: Path) -> Runner:
    return Runner(run_cli, bfl_server(latency=0.01), tmp_path)


def test_two_runs_at_once_keep_each_others_records(bfl_server: Start,
                                                   write_recipe: WriteRecipe,
                                                   tmp_path: Path) -> None:
    server = bfl_server(latency=0.01)
    recipe = write_recipe(grid("red", "blue"))
    signal = tmp_path / "go"
    runs = [start("-c", AT_THE_SIGNAL, str(signal), "run", str(recipe), "--provider", "bfl",
                  "--api-base", server.url, "--cache-dir", str(tmp_path / "cache"),
                  "--var", f"color={color}", "--out", str(tmp_path / f"out-{color}"))
            for color in ("red", "blue")]
    signal.touch()  # both read the lock (none yet) before either writes it, most times
    for process in runs:
        code, stderr = finish(process)
        assert code == 0, stderr
    lock = read_lock(recipe.with_suffix(".lock"))
    assert lock is not None
    assert sorted(lock.steps) == [(f"color={color}", step) for color in ("blue", "red")
                                  for step in ("frame", "paint")]
    assert {lock.steps[("color=red", "frame")].files[0].path,
            lock.steps[("color=blue", "frame")].files[0].path} == {
        "out-red/color=red/frame.png", "out-blue/color=blue/frame.png"}


@pytest.mark.parametrize("style", [(), ("--diff3",)])
def test_relock_rewrites_a_conflicted_lock_from_both_sides_without_the_cache(
        runner: Runner, write_recipe: WriteRecipe, tmp_path: Path,
        style: tuple[str, ...]) -> None:
    recipe = write_recipe(grid("red"))
    lock = recipe.with_suffix(".lock")
    assert runner(recipe).exit_code == 0
    base = lock.read_text(encoding="utf-8")
    # ours adds blue, theirs adds green: each branch runs it and commits its lock and files
    write_recipe(grid("red", "blue"))
    assert runner(recipe).exit_code == 0
    ours = lock.read_text(encoding="utf-8")
    shutil.copytree(runner.out, tmp_path / "ours-out")
    write_recipe(grid("red", "green"))
    lock.write_text(base, encoding="utf-8")
    assert runner(recipe).exit_code == 0
    theirs = lock.read_text(encoding="utf-8")
    # the merge: both branches' files, both recipes' variants, the locks in conflict
    shutil.copytree(tmp_path / "ours-out", runner.out, dirs_exist_ok=True)
    write_recipe(grid("red", "blue", "green"))
    for name, text in (("ours", ours), ("base", base), ("theirs", theirs)):
        (tmp_path / f"{name}.lock").write_text(text, encoding="utf-8")
    merged = subprocess.run(
        ["git", "merge-file", "-p", *style, "-L", "ours", "-L", "base", "-L", "theirs",
         str(tmp_path / "ours.lock"), str(tmp_path / "base.lock"),
         str(tmp_path / "theirs.lock")], capture_output=True, text=True, check=False)
    assert merged.returncode == 1, merged.stderr  # one conflict
    assert merged.stdout.count("<<<<<<< ours\n") == 1
    assert ("||||||| base\n" in merged.stdout) == bool(style)  # diff3: the base lines too
    lock.write_text(merged.stdout, encoding="utf-8")
    shutil.rmtree(runner.cache)
    made = runner.submitted()
    plain = runner(recipe, "--frozen", key="")
    assert plain.exit_code == 2
    assert "; resolve the conflict, or rewrite it with `kontext-pipeline run" in plain.stderr
    result = runner(recipe, "--frozen", "--relock", key="")
    assert result.exit_code == 0, result.output
    assert (f"{lock} was merged with conflicts: both sides are read, and each step's record is "
            "kept whose image the cache or the exported files hold") in result.stderr
    assert runner.submitted() == made
    relocked = read_lock(lock)
    assert relocked is not None
    assert sorted(relocked.steps) == [(f"color={color}", step)
                                      for color in ("blue", "green", "red")
                                      for step in ("frame", "paint")]
    for side in (ours, theirs):
        (tmp_path / "side.lock").write_text(side, encoding="utf-8")
        recorded = read_lock(tmp_path / "side.lock")
        assert recorded is not None
        for where, record in recorded.steps.items():
            assert relocked.steps[where].output_sha256 == record.output_sha256
    check = runner.run_cli("check", str(recipe), env={"BFL_API_KEY": None})
    assert (check.exit_code, check.stderr) == (0, ""), check.output


class WatchedCache(Cache):
    """A cache that notes the thread each lookup and read of an image runs on."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.threads: list[tuple[str, int]] = []

    def lookup(self, key: str, output_format: str | None = None) -> Lookup:
        self.threads.append(("lookup", threading.get_ident()))
        return super().lookup(key, output_format)

    def read(self, entry: CacheEntry) -> bytes:
        self.threads.append(("read", threading.get_ident()))
        return super().read(entry)


def test_the_blocking_work_is_off_the_event_loop_and_notes_come_back_to_it(
        runner: Runner, write_recipe: WriteRecipe) -> None:
    from kontext_pipeline.runner._pipelines import run_plans  # noqa: PLC0415

    recipe = write_recipe(grid("red", "blue"))
    assert runner(recipe).exit_code == 0
    lock = recipe.with_suffix(".lock")
    good = lock.read_bytes()
    lock.write_bytes(b"<<<<<<< HEAD\n" + good + b"=======\n>>>>>>> theirs\n")  # relock: a note
    shutil.rmtree(runner.out)  # every image exported again: read from the cache
    cache = WatchedCache(runner.cache)
    notes: list[tuple[str, int]] = []
    plan = build_plan(load_recipe(recipe), provider="bfl")

    async def run() -> int:
        await run_plans([plan], cache=cache, out_dirs=[runner.out], frozen=True, relock=True,
                        open_provider=lambda: provider_for(runner.server),
                        on_note=lambda note: notes.append((note, threading.get_ident())))
        return threading.get_ident()

    loop_thread = asyncio.run(run())
    assert lock.read_bytes() == good
    assert sorted({what for what, _ in cache.threads}) == ["lookup", "read"]
    assert [what for what, thread in cache.threads if thread == loop_thread] == []
    assert [thread for _, thread in notes] == [loop_thread]
    assert notes[0][0].startswith(f"{lock} cannot be read, so it is ignored")
