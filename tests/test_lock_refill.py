"""``run`` and ``run --frozen`` take what the lock and its intact exported files hold: with an
empty cache nothing is requested again and the cache is refilled; an edited or linked file is
not trusted; ``--relock`` rewrites the lock without any request."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from PIL import Image

from kontext_pipeline import Cache, build_plan, load_recipe
from kontext_pipeline.plan._resolution import resolve
from kontext_pipeline.runner._locking import refill_from_files
from kontext_pipeline.server._run import BackgroundServer
from kontext_pipeline.store._lock import read_lock
from tests.bfl_helpers import KEY
from tests.conftest import RunCli, Start, WriteRecipe

CHAIN = """
    version: 1
    name: chain
    seed: 3
    inputs: {photo: photo.png}
    steps:
      - {id: recolor, image: photo, prompt: Paint the car red}
      - {id: sign, prompt: Replace the sign text with OPEN}
      - {id: relight, prompt: Relight the scene at dusk, output_format: jpeg}
    outputs:
      poster: relight
"""

PROMPTS = ["Paint the car red", "Replace the sign text with OPEN", "Relight the scene at dusk"]


class Runner:
    """Runs the CLI against one server, one cache and one output directory."""

    def __init__(self, run_cli: RunCli, server: BackgroundServer, tmp_path: Path) -> None:
        self.run_cli, self.server = run_cli, server
        self.cache, self.out = tmp_path / "cache", tmp_path / "out"

    def __call__(self, recipe: Path, *args: str, key: str = KEY) -> Result:
        return self.run_cli("run", str(recipe), "--provider", "bfl", "--api-base",
                            self.server.url, "--cache-dir", str(self.cache), "--out",
                            str(self.out), *args, env={"BFL_API_KEY": key})

    def submitted(self) -> list[str]:
        """The prompts the server was asked to make, in order."""
        return [r.body["prompt"] for r in self.server.state.requests
                if r.method == "POST" and r.body is not None and r.status == 200]

    def objects(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in (self.cache / "v1" / "objects").rglob("*")
                if p.is_file()}

    def manifest_steps(self) -> list[dict[str, Any]]:
        steps: list[dict[str, Any]] = json.loads(
            (self.out / "manifest.json").read_text())["steps"]
        return steps


@pytest.fixture
def runner(run_cli: RunCli, bfl_server: Start, tmp_path: Path) -> Runner:
    return Runner(run_cli, bfl_server(latency=0.01), tmp_path)


@pytest.fixture
def made(runner: Runner, write_recipe: WriteRecipe) -> Path:
    """The chain, run once: its lock and exported files are there, and its cache."""
    recipe = write_recipe(CHAIN)
    result = runner(recipe)
    assert result.exit_code == 0, result.output
    assert runner.submitted() == PROMPTS
    return recipe


def test_an_empty_cache_is_refilled_from_the_exported_files_without_a_request(
        runner: Runner, made: Path) -> None:
    objects = runner.objects()
    lock = made.with_suffix(".lock").read_bytes()
    shutil.rmtree(runner.cache)
    requests = len(runner.server.state.requests)
    result = runner(made, key="")  # no key: nothing may be asked of the API
    assert result.exit_code == 0, result.output
    assert len(runner.server.state.requests) == requests
    assert sum(runner.server.state.submits.values()) == 3  # the first run's, and no more
    assert runner.objects() == objects  # byte for byte the images the API gave
    assert made.with_suffix(".lock").read_bytes() == lock
    assert [s["cache"] for s in runner.manifest_steps()] == ["hit", "hit", "hit"]
    verify = runner.run_cli("cache", "verify", "--cache-dir", str(runner.cache))
    assert verify.exit_code == 0, verify.output


def test_frozen_passes_from_the_lock_with_an_empty_cache(runner: Runner, made: Path) -> None:
    shutil.rmtree(runner.cache)
    result = runner(made, "--frozen", key="")
    assert result.exit_code == 0, result.output
    assert len(runner.submitted()) == 3
    assert len(runner.objects()) == 3


def test_intermediate_steps_no_file_holds_come_from_the_lock(runner: Runner,
                                                             made: Path) -> None:
    lock = made.with_suffix(".lock").read_bytes()
    before = {s["step"]: s for s in runner.manifest_steps()}
    shutil.rmtree(runner.cache)
    shutil.rmtree(runner.out / "steps")  # never committed, say
    result = runner(made, "--frozen", key="")
    assert result.exit_code == 0, result.output
    assert len(runner.submitted()) == 3
    # the records stay, without the files that are gone: `check` passes without them
    kept = read_lock(made.with_suffix(".lock"))
    assert kept is not None
    assert [(step, [f.path for f in record.files]) for (_, step), record in kept.steps.items()
            ] == [("recolor", []), ("sign", []), ("relight", ["out/poster.jpg"])]
    assert made.with_suffix(".lock").read_bytes() == re.sub(
        rb"      files:\n        - \{path: out/steps/[a-z]+\.png, file_sha256: [0-9a-f]{64}\}\n",
        b"      files: []\n", lock)
    steps = {s["step"]: s for s in runner.manifest_steps()}
    for name in ("recolor", "sign"):  # held by the lock: its hash, no image, no cost
        assert steps[name]["output_sha256"] == before[name]["output_sha256"]
        assert (steps[name]["cache"], steps[name]["credits"], steps[name]["image"]) == (
            "hit", 0, None)
    assert steps["relight"]["inputs_sha256"] == [before["sign"]["output_sha256"]]
    assert list(runner.objects()) == [before["relight"]["output_sha256"]]
    assert not (runner.out / "steps").exists()


def test_an_edited_exported_file_is_not_trusted(runner: Runner, made: Path) -> None:
    poster = runner.out / "poster.jpg"
    poster.write_bytes(poster.read_bytes() + b"\0")
    shutil.rmtree(runner.cache)
    frozen = runner(made, "--frozen", key="")
    assert frozen.exit_code == 3
    assert frozen.stderr.splitlines()[1:] == [
        "  chain / default / relight: its exported file out/poster.jpg was changed since the "
        "lock was written; the step runs again"]
    result = runner(made)
    assert result.exit_code == 0, result.output
    assert runner.submitted() == [*PROMPTS, "Relight the scene at dusk"]


def test_a_symbolic_link_in_place_of_an_exported_file_is_not_read(runner: Runner,
                                                                  made: Path) -> None:
    poster = runner.out / "poster.jpg"
    copy = runner.out.parent / "elsewhere.jpg"
    shutil.copyfile(poster, copy)  # the very bytes the lock records
    poster.unlink()
    poster.symlink_to(copy)
    shutil.rmtree(runner.cache)
    frozen = runner(made, "--frozen", key="")
    assert frozen.exit_code == 3
    assert frozen.stderr.splitlines()[1:] == [
        "  chain / default / relight: its exported file out/poster.jpg is a symbolic link "
        "(not read); the step runs again"]


def test_a_step_that_runs_again_has_its_unheld_inputs_run_first(runner: Runner,
                                                                made: Path,
                                                                write_recipe: WriteRecipe
                                                                ) -> None:
    shutil.rmtree(runner.cache)
    shutil.rmtree(runner.out / "steps")
    changed = write_recipe(CHAIN.replace("at dusk", "at dawn"))
    frozen = runner(changed, "--frozen", key="")
    assert frozen.exit_code == 3
    lines = frozen.stderr.splitlines()
    assert lines[0] == ("kontext-pipeline: --frozen: 3 steps not in the cache; no provider "
                        "was called:")
    assert lines[1:3] == [
        "  chain / default / recolor: 'sign' runs again and reads its output, which neither "
        "the cache nor an exported file holds",
        "  chain / default / sign: its input 'recolor' is not cached"]
    assert lines[3].startswith("  chain / default / relight: its input 'sign' is not cached")
    assert runner(changed).exit_code == 0
    assert runner.submitted() == [*PROMPTS, *PROMPTS[:2], "Relight the scene at dawn"]


def test_relock_rewrites_an_unreadable_lock_without_a_request(runner: Runner,
                                                              made: Path) -> None:
    path = made.with_suffix(".lock")
    good = path.read_bytes()
    path.write_bytes(b"<<<<<<< HEAD\n" + good + b"=======\n>>>>>>> theirs\n")
    result = runner(made, "--frozen", "--relock", key="")
    assert result.exit_code == 0, result.output
    assert path.read_bytes() == good
    assert result.stdout.endswith(f", {path}\n")
    # one side is the whole lock, the other nothing: no lock to read side by side
    assert (f"{path} cannot be read, so it is ignored and written again from the cache alone "
            f"(3 problems, the first: {path}:1:1: git merge conflict marker "
            "'<<<<<<<': the lock was merged with conflicts)") in result.stderr
    assert len(runner.submitted()) == 3


def test_relock_without_the_results_leaves_the_lock_alone(runner: Runner,
                                                          made: Path) -> None:
    path = made.with_suffix(".lock")
    path.write_bytes(b"version: 9\n")
    shutil.rmtree(runner.cache)
    result = runner(made, "--frozen", "--relock", key="")
    assert result.exit_code == 3
    assert path.read_bytes() == b"version: 9\n"
    assert len(runner.submitted()) == 3


def test_the_files_can_be_checked_without_storing_them(runner: Runner, made: Path) -> None:
    shutil.rmtree(runner.cache)
    cache = Cache(runner.cache)
    plan = build_plan(load_recipe(made), provider="bfl")
    resolved = resolve(plan, cache, read_lock(made.with_suffix(".lock")),
                       from_files=refill_from_files(cache, made.parent, store=False))
    assert [(r.source, r.hit) for r in resolved] == [("files", True)] * 3
    assert [r.output_sha256 for r in resolved] == [s["output_sha256"]
                                                   for s in runner.manifest_steps()]
    assert not runner.cache.exists()
    preview = build_plan(load_recipe(made), provider="preview")  # another provider's lock: none
    assert [r.hit for r in resolve(preview, cache, read_lock(made.with_suffix(".lock")))] == [
        False, False, False]


def _another_image_in_the_cache(runner: Runner, key: str) -> str:
    """Store another image than the one the run made under ``key`` (as a run elsewhere that
    made it again might have); returns its sha256."""
    cache = Cache(runner.cache)
    entry = cache.lookup(key, "png").entry
    assert entry is not None
    buffer = io.BytesIO()
    Image.new("RGB", (entry.width, entry.height), (1, 2, 3)).save(buffer, "PNG")
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    cache.store(data, dataclasses.replace(entry, object=digest, size=len(data)))
    return digest


def test_the_lock_wins_over_a_cache_that_holds_another_image(runner: Runner,
                                                               made: Path) -> None:
    path = made.with_suffix(".lock")
    lock = path.read_bytes()
    recorded = read_lock(path)
    assert recorded is not None
    recolor = recorded.steps[("default", "recolor")]
    _another_image_in_the_cache(runner, recolor.key)
    result = runner(made, key="")
    assert result.exit_code == 0, result.output
    assert ("chain/default/recolor: warning: the cache holds another image than the lock for "
            "default / recolor; the lock's is used\n") in result.stderr
    assert path.read_bytes() == lock
    assert len(runner.submitted()) == 3
    entry = Cache(runner.cache).lookup(recolor.key, "png").entry  # mended from the file
    assert entry is not None
    assert entry.object == recolor.output_sha256


def test_the_cache_is_used_when_no_file_holds_the_locks_image(runner: Runner,
                                                               made: Path) -> None:
    path = made.with_suffix(".lock")
    recorded = read_lock(path)
    assert recorded is not None
    key = recorded.steps[("default", "recolor")].key
    other = _another_image_in_the_cache(runner, key)
    (runner.out / "steps" / "recolor.png").unlink()
    result = runner(made)
    assert result.exit_code == 0, result.output
    assert ("chain/default/recolor: warning: the cache holds another image than the lock for "
            "default / recolor, and the lock's is not to be had (its exported file "
            "out/steps/recolor.png is missing); the cache's is used\n") in result.stderr
    relocked = read_lock(path)
    assert relocked is not None
    assert relocked.steps[("default", "recolor")].output_sha256 == other
    assert runner.submitted() == [*PROMPTS, *PROMPTS[1:]]  # what reads it is made again
