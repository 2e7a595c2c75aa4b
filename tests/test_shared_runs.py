"""Runs that share a cache on object storage (a real S3-compatible server on loopback, moto's),
as a team's machines and a CI fleet's jobs do: what one machine made, another takes without a
request; a read-only job writes nothing; the store dying mid-run or holding a tampered object
is one warning and never a failed or wrong step; two writers at once leave valid objects; the
shards of a run cover every variant once and merge into one report."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from PIL import Image

import kontext_pipeline as kp
from kontext_pipeline import Cache, build_plan, load_recipe, run_pipelines
from kontext_pipeline.outputs._manifest import MANIFEST, read_manifest
from kontext_pipeline.outputs._thumbnails import THUMBNAILS, ThumbnailStore
from kontext_pipeline.runner._executor import RunEvent
from kontext_pipeline.runner._pipelines import PipelineReport, RunStart
from kontext_pipeline.server._run import BackgroundServer
from kontext_pipeline.store._lock import read_lock
from kontext_pipeline.store._shared import SharedCache, frame, read_header, unframe
from tests.bfl_helpers import KEY, provider_for
from tests.conftest import RunCli, Start, StartS3, WriteRecipe, exported_images
from tests.s3_helpers import S3Bucket, fresh_bucket

CHAIN = """
    version: 1
    name: chain
    seed: 3
    matrix:
      tone: [dusk, dawn]
    inputs: {photo: photo.png}
    steps:
      - {id: recolor, image: photo, prompt: "Paint the car red at {{ tone }}"}
      - {id: relight, prompt: "Relight the scene at {{ tone }}"}
    outputs:
      poster: relight
    """
"""Two variants of two steps (the second reads the first): four results."""

PROMPTS = sorted(f"{verb} at {tone}" for verb in ("Paint the car red", "Relight the scene")
                 for tone in ("dusk", "dawn"))

FAN = """
    version: 1
    name: fan
    seed: 3
    matrix:
      tone: [dusk, dawn, noon, night]
    inputs: {photo: photo.png}
    steps:
      - {id: recolor, image: photo, prompt: "Paint the car red at {{ tone }}"}
    outputs:
      car: recolor
    """
"""Four variants of one step from the recipe's photo: every key is known before the run."""

PAIR = """
    version: 1
    name: pair
    matrix:
      ink: [red, blue]
    steps:
      - {id: draw, prompt: "Draw a car in {{ ink }}"}
    outputs:
      drawing: draw
    """
"""Two variants of one step, for runs where the provider does not matter (preview)."""

GOING_ON = "the run goes on with the local cache only"


@pytest.fixture
def aws(s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> S3Bucket:
    """The bucket, with the environment the storage library reads pointing at it (obstore
    reads the process's environment, as a command run in a CI job does)."""
    point_at(s3_bucket, monkeypatch)
    return s3_bucket


def point_at(bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith(("AWS_", "KONTEXT_SHARED_CACHE"))]:
        monkeypatch.delenv(name)
    for name, value in bucket.environ.items():
        monkeypatch.setenv(name, value)


class Machine:
    """One machine of the team: its own local cache and --out folder, the same recipe, the
    bfl provider against the bundled server."""

    def __init__(self, run_cli: RunCli, server: BackgroundServer, root: Path) -> None:
        self.run_cli, self.server = run_cli, server
        self.cache, self.out = root / "cache", root / "out"

    def run(self, recipe: Path, *args: str, key: str = KEY,
            env: dict[str, str] | None = None) -> Result:
        return self.run_cli("run", str(recipe), "--provider", "bfl", "--api-base",
                            self.server.url, "--cache-dir", str(self.cache), "--out",
                            str(self.out), *args, env={"BFL_API_KEY": key, **(env or {})})


def submitted(server: BackgroundServer) -> list[str]:
    """The prompts the API accepted to make, sorted."""
    return sorted(r.body["prompt"] for r in server.state.requests
                  if r.method == "POST" and r.body is not None and r.status == 200)


def shared_warnings(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines()
            if line.startswith("warning: shared cache")]


def cache_column(out: Path) -> list[str]:
    steps: list[dict[str, Any]] = json.loads((out / MANIFEST).read_text())["steps"]
    return [step["cache"] for step in steps]


def verified(bucket: S3Bucket) -> dict[str, str]:
    """Every object in the bucket checked as a reader checks it: its key -> its image's sha256
    (a damaged object fails the test)."""
    found = {}
    for name, data in bucket.server.objects(bucket.name).items():
        key = name.rsplit("/", 1)[-1]
        assert name == f"team/v1/{key[:2]}/{key}"
        entry, _ = unframe(key, data, None)
        found[key] = entry.object
    return found


@dataclass(frozen=True)
class Team:
    """The command line, the API server every machine asks, and the folder the machines are
    in (``tmp_path``)."""

    run_cli: RunCli
    bfl: BackgroundServer
    root: Path

    def machine(self, name: str) -> Machine:
        return Machine(self.run_cli, self.bfl, self.root / name)


@pytest.fixture
def team(run_cli: RunCli, bfl_server: Start, tmp_path: Path) -> Team:
    return Team(run_cli, bfl_server(latency=0.01), tmp_path)


@pytest.fixture
def chain(write_recipe: WriteRecipe) -> Path:
    return write_recipe(CHAIN)


def test_a_second_machine_makes_no_request_for_what_the_first_made(
        aws: S3Bucket, team: Team, chain: Path) -> None:
    first, second = team.machine("first"), team.machine("second")
    bfl = team.bfl
    made = first.run(chain, "--no-lock", "--shared-cache", aws.url)
    assert made.exit_code == 0, made.output
    assert submitted(bfl) == PROMPTS
    assert made.stderr.endswith(f"shared cache {aws.url}: 4 new results uploaded\n")
    assert len(verified(aws)) == 4
    requests = len(bfl.state.requests)
    # no key: the run could not ask the API for anything
    taken = second.run(chain, "--no-lock", "--shared-cache", aws.url, key="")
    assert taken.exit_code == 0, taken.output
    assert len(bfl.state.requests) == requests
    assert ("run: 4 steps: 4 cached (4 from the shared cache), 0 to run, expected cost 0 "
            "credits ($0.00)") in taken.stderr.splitlines()
    assert "uploaded" not in taken.stderr
    assert shared_warnings(taken) == []
    assert exported_images(second.out) == exported_images(first.out)
    assert len(exported_images(second.out)) == 4  # two posters, two intermediate images
    assert cache_column(second.out) == ["hit"] * 4
    verify = team.run_cli("cache", "verify", "--cache-dir", str(second.cache))
    assert verify.exit_code == 0, verify.output
    assert Cache(second.cache).stats().entries == 4


def test_a_machine_with_the_lock_but_neither_cache_nor_files_takes_the_shared_results(
        aws: S3Bucket, team: Team, chain: Path) -> None:
    """The lock is committed; a colleague's checkout has it, but not the exported files: the
    lock alone does not stand in for the poster, the shared cache does."""
    bfl, tmp_path = team.bfl, team.root
    first = Machine(team.run_cli, bfl, tmp_path)  # its out/ is where the lock says
    assert first.run(chain, "--shared-cache", aws.url).exit_code == 0
    colleague = tmp_path / "colleague"
    colleague.mkdir()
    for name in ("recipe.yaml", "recipe.lock", "photo.png"):
        shutil.copy(tmp_path / name, colleague / name)
    lock = (colleague / "recipe.lock").read_bytes()
    requests = len(bfl.state.requests)
    second = Machine(team.run_cli, bfl, colleague)
    taken = second.run(colleague / "recipe.yaml", "--shared-cache", aws.url, key="")
    assert taken.exit_code == 0, taken.output
    assert len(bfl.state.requests) == requests
    assert "4 cached (4 from the shared cache)" in taken.stderr
    assert exported_images(second.out) == exported_images(first.out)
    assert (colleague / "recipe.lock").read_bytes() == lock


@pytest.mark.parametrize("how", ["option", "environment"])
def test_a_read_only_job_changes_nothing_in_the_bucket(
        aws: S3Bucket, team: Team, chain: Path, how: str) -> None:
    first = team.machine("first")
    assert first.run(chain, "--no-lock", "--shared-cache", aws.url,
                     "--var", "tone=dusk").exit_code == 0
    before = aws.server.objects(aws.name)
    assert len(before) == 2
    pull_request = team.machine("pull-request")
    args, env = (["--shared-cache", aws.url, "--shared-cache-readonly"], {}) if how == "option" \
        else ([], {"KONTEXT_SHARED_CACHE": aws.url, "KONTEXT_SHARED_CACHE_READONLY": "1"})
    # every tone: two results taken from the shared cache, two new ones
    result = pull_request.run(chain, "--no-lock", *args, env=env)
    assert result.exit_code == 0, result.output
    assert "4 steps: 2 cached (2 from the shared cache), 2 to run" in result.stderr
    assert submitted(team.bfl) == PROMPTS
    assert "uploaded" not in result.stderr
    assert shared_warnings(result) == []
    assert aws.server.objects(aws.name) == before
    assert Cache(pull_request.cache).stats().entries == 4  # the new results are kept locally


def test_the_store_killed_mid_run_is_one_warning_and_the_run_completes(
        s3_server_factory: StartS3, monkeypatch: pytest.MonkeyPatch, team: Team,
        write_recipe: WriteRecipe) -> None:
    bfl, tmp_path = team.bfl, team.root
    server = s3_server_factory()
    bucket = fresh_bucket(server)
    point_at(bucket, monkeypatch)
    recipe = write_recipe("""
        version: 1
        name: three
        steps:
          - {id: first, prompt: Draw a red car}
          - {id: second, image: first, prompt: Paint it blue}
          - {id: third, image: second, prompt: Relight it at dusk}
        outputs:
          poster: third
        """)
    notes: list[str] = []
    shared = SharedCache.open(bucket.url, os.environ, on_warning=notes.append)

    def kill_after_the_first_upload(event: RunEvent) -> None:
        if event.kind != "submitted" or event.task.step != "second":
            return
        # the first result is stored and its upload under way on a worker thread: let it
        # land, then the store dies before the second result is made
        deadline = time.monotonic() + 30
        while shared.uploaded < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert shared.uploaded == 1
        server.kill()

    (report,) = run_pipelines(
        [build_plan(load_recipe(recipe), provider="bfl")], cache=Cache(tmp_path / "cache"),
        out_dirs=[tmp_path / "out"], lock=False, shared=shared, on_note=notes.append,
        on_event=kill_after_the_first_upload,
        open_provider=lambda: provider_for(bfl))
    assert server.returncode == -9
    assert report.failures == []
    assert [step.status for step in report.manifest.steps] == ["done"] * 3
    assert notes == [f"shared cache {bucket.url}: cannot connect to the store; {GOING_ON}"]
    assert (shared.uploaded, shared.on) == (1, False)
    assert Cache(tmp_path / "cache").stats().entries == 3
    assert submitted(bfl) == ["Draw a red car", "Paint it blue", "Relight it at dusk"]


def test_a_tampered_object_is_never_served(aws: S3Bucket, team: Team, chain: Path) -> None:
    first, second = team.machine("first"), team.machine("second")
    bfl = team.bfl
    assert first.run(chain, "--no-lock", "--shared-cache", aws.url).exit_code == 0
    poster = next(s for s in read_manifest(first.out / MANIFEST).steps
                  if s.variant == "tone=dawn" and s.step == "relight")
    objects = aws.server.objects(aws.name)
    name = next(n for n, data in objects.items()
                if read_header(n.rsplit("/", 1)[-1], data)[0].object == poster.output_sha256)
    entry, start = read_header(name.rsplit("/", 1)[-1], objects[name])
    tampered = bytearray(objects[name])
    tampered[start + entry.size - 30] ^= 0x01  # one bit of the image, the entry as it was
    aws.server.put(aws.name, name, bytes(tampered))
    result = second.run(chain, "--no-lock", "--shared-cache", aws.url)
    assert result.exit_code == 0, result.output
    key = name.rsplit("/", 1)[-1]
    assert shared_warnings(result) == [
        f"warning: shared cache object v1/{key[:2]}/{key[:14]}… holds an image whose sha256 "
        "is not its entry's; it is not used"]
    assert "4 steps: 3 cached (3 from the shared cache), 1 to run" in result.stderr
    # the tampered result was made again, and nothing else
    assert submitted(bfl) == sorted([*PROMPTS, "Relight the scene at dawn"])
    taken = read_manifest(second.out / MANIFEST)
    assert [s.output_sha256 for s in taken.steps] == [
        s.output_sha256 for s in read_manifest(first.out / MANIFEST).steps]
    assert exported_images(second.out) == exported_images(first.out)
    # and uploaded again, whole: the bucket holds valid objects only
    assert result.stderr.endswith(f"shared cache {aws.url}: 1 new result uploaded\n")
    assert verified(aws)[key] == poster.output_sha256


def test_two_writers_at_once_leave_only_valid_objects(
        aws: S3Bucket, team: Team, write_recipe: WriteRecipe) -> None:
    # both runs look every key up before either uploads (each key is known before the run:
    # no step reads another's), so each makes every result and both upload each key at once
    bfl, tmp_path = team.bfl, team.root
    fan = write_recipe(FAN, "fan.yaml")
    prompts = sorted(f"Paint the car red at {tone}" for tone in ("dusk", "dawn", "noon", "night"))
    both_resolved = threading.Barrier(2, timeout=30)

    def writer(name: str, reports: list[PipelineReport]) -> None:
        def on_start(_start: RunStart) -> None:
            both_resolved.wait()

        shared = SharedCache.open(aws.url, os.environ, on_warning=warnings.append)
        reports += run_pipelines(
            [build_plan(load_recipe(fan), provider="bfl")],
            cache=Cache(tmp_path / name / "cache"), out_dirs=[tmp_path / name / "out"],
            lock=False, shared=shared, on_start=on_start, on_note=warnings.append,
            open_provider=lambda: provider_for(bfl))
        uploads.append(shared.uploaded)

    warnings: list[str] = []
    uploads: list[int] = []
    reports: list[list[PipelineReport]] = [[], []]
    threads = [threading.Thread(target=writer, args=(name, done))
               for name, done in zip(("a", "b"), reports, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [len(done) for done in reports] == [1, 1]
    assert all(done[0].failures == [] for done in reports)
    assert warnings == []
    assert uploads == [4, 4]
    assert submitted(bfl) == sorted(prompts * 2)
    assert len(verified(aws)) == 4
    # a third machine takes every result from the bucket
    requests = len(bfl.state.requests)
    third = team.machine("third")
    result = third.run(fan, "--no-lock", "--shared-cache", aws.url, key="")
    assert result.exit_code == 0, result.output
    assert len(bfl.state.requests) == requests
    assert "4 cached (4 from the shared cache)" in result.stderr
    assert exported_images(third.out) == exported_images(tmp_path / "a" / "out")


def test_plan_says_what_the_shared_cache_holds(aws: S3Bucket, team: Team, chain: Path) -> None:
    run_cli, bfl = team.run_cli, team.bfl
    first = team.machine("first")
    assert first.run(chain, "--no-lock", "--shared-cache", aws.url,
                     "--var", "tone=dusk").exit_code == 0
    requests = len(bfl.state.requests)
    empty = str(team.root / "empty-cache")
    result = run_cli("plan", str(chain), "--provider", "bfl", "--cache-dir", empty,
                     "--shared-cache", aws.url)
    assert result.exit_code == 0, result.output
    steps = [line for line in result.stdout.splitlines()
             if re.match(r"  \d\. (recolor|relight) ", line)]
    assert len(steps) == 4
    assert ["in the shared cache" in line for line in steps] == [True, True, False, False]
    assert "2 of 4 cached (2 in the shared cache)" in result.stdout
    assert result.stderr == ""
    # a plan only reads: nothing taken into the local cache, no request
    assert not Path(empty).exists() or Cache(empty).stats().entries == 0
    assert len(bfl.state.requests) == requests
    alone = run_cli("plan", str(chain), "--provider", "bfl", "--cache-dir", empty)
    assert "in the shared cache" not in alone.stdout


def test_a_frozen_run_with_an_empty_cache_takes_the_shared_results(
        aws: S3Bucket, run_cli: RunCli, write_recipe: WriteRecipe, tmp_path: Path) -> None:
    pair = write_recipe(PAIR)

    def run(cache: str, *args: str) -> Result:
        return run_cli("run", str(pair), "--provider", "preview", "--cache-dir",
                       str(tmp_path / cache), "--out", str(tmp_path / f"out-{cache}"), *args)

    assert run("first", "--shared-cache", aws.url).exit_code == 0
    refused = run("alone", "--frozen")
    # without the shared cache, a frozen run has nothing
    assert refused.exit_code == 3
    assert refused.stderr.startswith("kontext-pipeline: --frozen: 2 steps not in the cache; "
                                     "no provider was called:\n")
    frozen = run("second", "--frozen", "--shared-cache", aws.url)
    assert frozen.exit_code == 0, frozen.output
    assert "2 cached (2 from the shared cache)" in frozen.stderr
    assert exported_images(tmp_path / "out-second") == exported_images(tmp_path / "out-first")


def test_the_python_api_shares_a_cache_and_logs_its_warnings(
        aws: S3Bucket, write_recipe: WriteRecipe, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    pair = write_recipe(PAIR)
    first = kp.run(pair, out=tmp_path / "out1", provider="preview",
                   cache_dir=tmp_path / "c1", shared_cache=aws.url, vars={"ink": "red"})
    assert first.ok
    assert len(verified(aws)) == 1
    # the URL from the environment, read-only: taken, not written
    monkeypatch.setenv("KONTEXT_SHARED_CACHE", aws.url)
    before = aws.server.objects(aws.name)
    second = kp.run(pair, out=tmp_path / "out2", provider="preview",
                    cache_dir=tmp_path / "c2", shared_cache_readonly=True)
    assert second.ok
    assert [s.cache for s in second.manifest.steps] == ["hit", "miss"]
    assert aws.server.objects(aws.name) == before
    assert caplog.records == []
    missing = aws.url.replace(aws.name, f"{aws.name}-missing")
    with caplog.at_level(logging.WARNING, logger="kontext_pipeline"):
        third = kp.run(pair, out=tmp_path / "out3", provider="preview",
                       cache_dir=tmp_path / "c3", shared_cache=missing, vars={"ink": "red"})
    assert third.ok
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("kontext_pipeline", logging.WARNING,
         f"shared cache {missing}: the bucket does not exist (HTTP 404); {GOING_ON}")]


# --- shards --------------------------------------------------------------------------------

GRID = """
    version: 1
    name: grid
    matrix:
      tone: [dusk, dawn, noon]
      size: [8, 9]
    steps:
      - {id: draw, prompt: "Draw a car at {{ tone }}, {{ size }} wide"}
    outputs:
      card: draw
    """
"""Six variants of one step."""


def test_shards_share_a_bucket_cover_every_variant_once_and_merge_into_one_report(
        aws: S3Bucket, run_cli: RunCli, write_recipe: WriteRecipe, tmp_path: Path) -> None:
    recipe = write_recipe(GRID)

    def run(out: str, *args: str) -> Result:
        return run_cli("run", str(recipe), "--provider", "preview", "--cache-dir",
                       str(tmp_path / f"cache-{out}"), "--out", str(tmp_path / out),
                       "--shared-cache", aws.url, *args)

    shards = [f"s{index}" for index in (1, 2, 3)]
    for index, out in enumerate(shards, 1):  # three CI jobs, each with an empty cache
        result = run(out, "--shard", f"{index}/3")
        assert result.exit_code == 0, result.output
    manifests = [read_manifest(tmp_path / out / MANIFEST) for out in shards]
    assert [str(m.shard) for m in manifests] == ["1/3", "2/3", "3/3"]
    held: Sequence[list[str]] = [m.variants for m in manifests]
    assert sorted(len(variants) for variants in held) == [2, 2, 2]
    everything = [v for variants in held for v in variants]
    assert sorted(everything) == sorted(f"tone={tone},size={size}"
                                        for tone in ("dusk", "dawn", "noon") for size in (8, 9))
    assert len(verified(aws)) == 6  # every shard's results, in the one bucket
    merged = run_cli("report", "--merge", str(tmp_path / "merged"),
                     *(str(tmp_path / out) for out in shards), "--cache-dir",
                     str(tmp_path / "cache-merge"))
    assert merged.exit_code == 0, merged.output
    assert merged.stdout == (f"{tmp_path / 'merged' / 'report.html'}: 3 shards merged, "
                             "6 files copied, 6 variants, 6 images\n")
    assert len(read_manifest(tmp_path / "merged" / MANIFEST).steps) == 6
    # the whole run afterwards, from an empty cache: every result from the shards' uploads
    whole = run("whole")
    assert whole.exit_code == 0, whole.output
    assert "6 steps: 6 cached (6 from the shared cache), 0 to run" in whole.stderr
    assert exported_images(tmp_path / "whole") == exported_images(tmp_path / "merged")



def _thumbnail_record(colour: tuple[int, int, int]) -> bytes:
    """A thumbnail as a machine keeps and uploads it, of a plain 8×6 picture."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), colour).save(buffer, "WEBP")
    return json.dumps({"mime": "image/webp", "width": 8, "height": 6,
                       "data": base64.b64encode(buffer.getvalue()).decode("ascii")}).encode()


def test_the_report_thumbnail_travels_with_each_result(aws: S3Bucket, team: Team,
                                                       chain: Path) -> None:
    """A machine that takes a result also takes its thumbnail (the report makes none again);
    one that is no thumbnail is not kept (the report makes it)."""
    first, second = team.machine("first"), team.machine("second")
    assert first.run(chain, "--no-lock", "--shared-cache", aws.url).exit_code == 0
    objects = aws.server.objects(aws.name)
    kept = ThumbnailStore(Cache(first.cache).root / THUMBNAILS)
    names = sorted(objects)
    for name in names:  # every object carries its image's thumbnail, as the first machine has it
        entry, start = read_header(name.rsplit("/", 1)[-1], objects[name])
        assert objects[name][start + entry.size:] == kept.record(entry.object)
    marked, hostile = names[0], names[1]
    for name, extra in ((marked, _thumbnail_record((255, 0, 255))),
                        (hostile, b'{"mime": "text/html", "width": 8, "height": 6, '
                                  b'"data": "PHNjcmlwdD4="}')):
        entry, start = read_header(name.rsplit("/", 1)[-1], objects[name])
        aws.server.put(aws.name, name, objects[name][:start + entry.size] + extra)
    assert second.run(chain, "--no-lock", "--shared-cache", aws.url).exit_code == 0
    taken = ThumbnailStore(Cache(second.cache).root / THUMBNAILS)
    marked_entry, _ = read_header(marked.rsplit("/", 1)[-1], objects[marked])
    hostile_entry, _ = read_header(hostile.rsplit("/", 1)[-1], objects[hostile])
    assert taken.record(marked_entry.object) == _thumbnail_record((255, 0, 255))
    made = taken.get(hostile_entry.object)  # made by the report, from the image itself
    assert made is not None
    assert made.mime in ("image/webp", "image/jpeg")
    assert made.data != b"<script>"


def test_a_shared_result_that_disagrees_with_the_lock_is_not_taken(
        aws: S3Bucket, team: Team, chain: Path) -> None:
    """The lock is the record: when the bucket holds another image for a locked key (a machine
    made it again, and the API answered otherwise), it is not taken in its place."""
    bfl, tmp_path = team.bfl, team.root
    first = Machine(team.run_cli, bfl, tmp_path)
    assert first.run(chain, "--shared-cache", aws.url).exit_code == 0
    lock = read_lock(tmp_path / "recipe.lock")
    objects = aws.server.objects(aws.name)
    other = Image.new("RGB", (16, 16), (0, 255, 0))
    buffer = io.BytesIO()
    other.save(buffer, "PNG")
    image = buffer.getvalue()
    replaced = 0
    for name, data in objects.items():
        entry, _ = read_header(name.rsplit("/", 1)[-1], data)
        swapped = replace(entry, object=hashlib.sha256(image).hexdigest(), size=len(image),
                          width=16, height=16)
        aws.server.put(aws.name, name, frame(swapped, image))
        replaced += 1
    assert replaced == 4
    colleague = tmp_path / "colleague"
    colleague.mkdir()
    for name in ("recipe.yaml", "recipe.lock", "photo.png"):
        shutil.copy(tmp_path / name, colleague / name)
    result = team.run_cli("plan", str(colleague / "recipe.yaml"), "--cache-dir",
                          str(tmp_path / "empty"), "--shared-cache", aws.url)
    assert result.exit_code == 0, result.output
    assert "in the shared cache" not in result.stdout
    assert read_lock(colleague / "recipe.lock") == lock
