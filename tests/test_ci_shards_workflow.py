"""The sharded workflow under docs/github-actions/ (kontext-shards.yml): its structure, and its
shell steps run as GitHub runs them, in git repositories of their own (a bare ``origin`` and
clones of it, as actions/checkout makes), against the bundled server and a real S3-compatible
server (moto's, on loopback). On main, the 4 ``shards`` jobs run at once, as separate processes,
each with an empty local cache, and make every step exactly once between them, filling the
bucket; ``collect`` then requests nothing (the bundled server counts), writes nothing to the
bucket, merges the shards' folders into one report and commits the locks and the images, which
a pull request's ``check`` then passes; the pull request's plan reads the bucket, read-only.

The steps that use actions are not run; the test does what they do: checkout is a clone of
``origin``; setup-python is this interpreter's folder first on PATH; upload-artifact keeps the
files of the shard's folder but the hidden ones, and download-artifact puts each shard's into
``kontext-shards/<artifact name>``. The install step is tests/test_ci_install.py's (the same
script as kontext.yml's)."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from kontext_pipeline.outputs._manifest import MANIFEST, read_manifest
from kontext_pipeline.server._run import BackgroundServer
from tests.bfl_helpers import KEY
from tests.conftest import PIPELINES, ROOT, Start
from tests.s3_helpers import S3Bucket
from tests.test_ci_files import load_workflow as load_plain_workflow
from tests.test_ci_files import triggers
from tests.test_ci_workflow import BOT, GIT_ENV, INSTALL, checkout, commit_all, git, tracked

WORKFLOW = ROOT / "docs" / "github-actions" / "kontext-shards.yml"
CHECK_JOB, SHARDS_JOB, COLLECT_JOB = "check", "shards", "collect"
ON_PULL_REQUEST = "github.event_name == 'pull_request'"
ON_MAIN = "github.event_name != 'pull_request' && github.ref == 'refs/heads/main'"
READ_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "${{ secrets.KONTEXT_CACHE_READ_KEY_ID }}",
                    "AWS_SECRET_ACCESS_KEY": "${{ secrets.KONTEXT_CACHE_READ_SECRET }}"}
WRITE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "${{ secrets.KONTEXT_CACHE_KEY_ID }}",
                     "AWS_SECRET_ACCESS_KEY": "${{ secrets.KONTEXT_CACHE_SECRET }}"}
STEPS = {"poster-chain": 3, "color-matrix": 12}  # each recipe's steps, over all its variants
MERGED = "kontext-report"

pytestmark = pytest.mark.skipif(shutil.which("git") is None or shutil.which("bash") is None,
                                reason="the workflow's steps are bash, and they run git")

Step = dict[str, Any]


@functools.cache
def load_workflow() -> dict[Any, Any]:
    workflow: dict[Any, Any] = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    return workflow


def job(name: str) -> dict[str, Any]:
    found: dict[str, Any] = load_workflow()["jobs"][name]
    return found


def steps(job_name: str) -> list[Step]:
    found: list[Step] = job(job_name)["steps"]
    return found


def named(job_name: str, name: str) -> Step:
    (found,) = [s for s in steps(job_name) if s.get("name") == name]
    return found


def using(job_name: str, action: str) -> list[Step]:
    return [s for s in steps(job_name) if str(s.get("uses", "")).startswith(action + "@")]


def running(job_name: str, command: str) -> Step:
    """The step whose script runs ``kontext-pipeline COMMAND``."""
    (found,) = [s for s in steps(job_name) if f"kontext-pipeline {command} " in s.get("run", "")]
    return found


def plain_step(job_name: str, name: str) -> Step:
    """A step of kontext.yml, the workflow without shards."""
    plain: list[Step] = load_plain_workflow()["jobs"][job_name]["steps"]
    (found,) = [s for s in plain if s.get("name") == name]
    return found


def shard_numbers() -> list[int]:
    numbers: list[int] = job(SHARDS_JOB)["strategy"]["matrix"]["shard"]
    return numbers


# --- structure ------------------------------------------------------------------------------

def test_the_jobs_run_on_pull_requests_and_on_main_as_the_plain_workflow_does() -> None:
    workflow = load_workflow()
    assert triggers(workflow) == triggers(load_plain_workflow())
    assert workflow["concurrency"] == load_plain_workflow()["concurrency"]
    assert set(workflow["jobs"]) == {CHECK_JOB, SHARDS_JOB, COLLECT_JOB}
    assert job(CHECK_JOB)["if"] == ON_PULL_REQUEST
    assert job(SHARDS_JOB)["if"] == job(COLLECT_JOB)["if"] == ON_MAIN
    assert job(COLLECT_JOB)["needs"] == SHARDS_JOB


def test_four_shards_each_run_their_share_and_fail_alone() -> None:
    strategy = job(SHARDS_JOB)["strategy"]
    assert strategy["fail-fast"] is False
    assert shard_numbers() == [1, 2, 3, 4]
    real = running(SHARDS_JOB, "run")
    assert real["run"].splitlines()[-2:] == [
        'kontext-pipeline run $RECIPES --shard "$SHARD/$SHARDS" '
        '--concurrency "$((24 / SHARDS))" \\',
        '  --out kontext-shard --max-credits "$MAX_CREDITS"']
    assert real["env"] == {"SHARD": "${{ matrix.shard }}", "SHARDS": "${{ strategy.job-total }}",
                           "BFL_API_KEY": "${{ secrets.BFL_API_KEY }}", **WRITE_CREDENTIALS}
    (upload,) = using(SHARDS_JOB, "actions/upload-artifact")
    assert upload["if"] == "always()"
    assert upload["with"] == {"name": "kontext-shard-${{ matrix.shard }}", "path": "kontext-shard",
                              "if-no-files-found": "warn", "overwrite": True}
    assert steps(SHARDS_JOB)[-1] is upload


def test_pull_requests_and_collect_only_read_the_bucket() -> None:
    workflow = load_workflow()
    assert workflow["env"]["KONTEXT_SHARED_CACHE"].startswith("s3://BUCKET/")
    assert job(CHECK_JOB)["env"] == job(COLLECT_JOB)["env"] == {
        "KONTEXT_SHARED_CACHE_READONLY": "1", **READ_CREDENTIALS}
    assert "env" not in job(SHARDS_JOB)
    collect = running(COLLECT_JOB, "run")
    assert "env" not in collect  # no key: a step missing from the bucket is exit 3
    assert collect["run"] == 'kontext-pipeline run $RECIPES --out "$OUT_DIR" --frozen'


def test_secrets_reach_only_the_steps_that_need_them() -> None:
    text = WORKFLOW.read_text(encoding="utf-8")
    assert text.count("secrets.") == 7
    assert text.count("secrets.BFL_API_KEY") == 1  # the shards' run step's, checked above
    # the read-only credentials are the pull request's and collect's (job env, checked
    # above); the key and the credentials that write reach one step
    holders = [(name, s["name"]) for name in (CHECK_JOB, SHARDS_JOB, COLLECT_JOB)
               for s in steps(name) if "secrets." in json.dumps(s)]
    assert holders == [(SHARDS_JOB, running(SHARDS_JOB, "run")["name"])]
    assert "secrets." not in json.dumps(load_workflow()["env"])
    assert job(COLLECT_JOB)["permissions"] == {"contents": "write"}
    assert "permissions" not in job(CHECK_JOB)
    assert "permissions" not in job(SHARDS_JOB)
    assert load_workflow()["permissions"] == {"contents": "read"}


def test_the_steps_it_shares_with_the_plain_workflow_are_the_same() -> None:
    install = plain_step("run", INSTALL)
    assert [named(j, INSTALL) for j in (CHECK_JOB, SHARDS_JOB, COLLECT_JOB)] == [install] * 3
    for name in ("Validate the recipes", "Show what merging would make, and its cost"):
        assert named(CHECK_JOB, name) == plain_step("check", name)
    # check: the same, but for the bucket given on the command line (check reads no cache from
    # the environment), which adds how many of the changed steps it holds
    name = "Check the recipes against their locks and the committed images (no key, no cache)"
    sharded, plain = named(CHECK_JOB, name), plain_step("check", name)
    shared = ' ${KONTEXT_SHARED_CACHE:+--shared-cache "$KONTEXT_SHARED_CACHE"}'
    assert shared in sharded["run"]
    assert {**sharded, "run": "\n".join(
        line.replace(shared, "") for line in sharded["run"].splitlines()
        if not line.lstrip().startswith("#"))} == {**plain, "run": plain["run"].rstrip("\n")}
    assert named(SHARDS_JOB, "Validate the recipes") == plain_step("run", "Validate the recipes")
    for name in ("Check what the run made against the recipes", "Publish the images and the locks"):
        assert named(COLLECT_JOB, name) == plain_step("run", name)
    plain_env = load_plain_workflow()["env"]
    assert {k: v for k, v in load_workflow()["env"].items() if k in plain_env} == {
        **plain_env, "MAX_CREDITS": "50"}


def test_collect_merges_the_shards_then_publishes_and_uploads_the_report() -> None:
    order = steps(COLLECT_JOB)
    (download,) = using(COLLECT_JOB, "actions/download-artifact")
    merge = running(COLLECT_JOB, "report")
    assert download["with"] == {"pattern": "kontext-shard-*", "path": "kontext-shards"}
    assert [order.index(s) for s in (
        named(COLLECT_JOB, INSTALL), download, merge, running(COLLECT_JOB, "run"),
        running(COLLECT_JOB, "check"), named(COLLECT_JOB, "Publish the images and the locks"),
    )] == list(range(2, 8))
    upload = order[-1]
    assert upload["uses"] == "actions/upload-artifact@v4"
    assert upload["if"] == "always()"
    assert upload["with"]["path"] == MERGED


def test_run_scripts_hold_no_expressions() -> None:
    # values reach the scripts through env only, never pasted in by ${{ }} (script injection)
    scripts = [s["run"] for name in (CHECK_JOB, SHARDS_JOB, COLLECT_JOB) for s in steps(name)
               if "run" in s]
    assert len(scripts) == 13
    assert all("${{" not in script for script in scripts)


# --- the steps, run ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    """How a job ended: the exit status of its last step (0: every step passed), that step's
    name and what it printed, and what every step printed."""

    returncode: int
    last_step: str
    output: str
    log: str


def run_script(script: str, workdir: Path, variables: Mapping[str, str]) -> \
        subprocess.CompletedProcess[str]:
    """A step's script as GitHub runs it (bash -eo pipefail), with ``variables`` and this
    Python's folder first on PATH, as actions/setup-python puts its own."""
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith(("BFL_", "KONTEXT_", "AWS_"))}
    environment.update(variables)
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment['PATH']}"
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
                          cwd=workdir, env=environment, capture_output=True, text=True,
                          check=False, timeout=120)


def run_job(name: str, workspace: Path, settings: Mapping[str, str],
            expressions: Mapping[str, str]) -> Job:
    """Run job ``name``'s shell steps in ``workspace`` in order, as GitHub would: the workflow's
    env with ``settings`` (what a user sets at its top), the job's env and the step's (each
    ``${{ }}`` replaced from ``expressions``), what earlier steps wrote to ``$GITHUB_ENV``, and
    the default variables the scripts read; the first step that fails ends the job."""
    github_env = workspace.parent / f"{workspace.name}-{name}.env"
    github_env.write_text("", encoding="utf-8")
    github = {"GITHUB_SHA": git(workspace, "rev-parse", "HEAD"), "GITHUB_REF_NAME": "main",
              "GITHUB_ENV": str(github_env), **GIT_ENV}
    base = {**load_workflow()["env"], **settings,
            **evaluate(job(name).get("env", {}), expressions)}
    log: list[str] = []
    last, done = "", None
    for step in steps(name):
        if "uses" in step or step["name"] == INSTALL:
            continue
        assert "if" not in step, step  # every script runs after the ones before it passed
        last = step["name"]
        done = run_script(step["run"], workspace, {
            k: str(v) for k, v in {**base, **evaluate(step.get("env", {}), expressions),
                                   **github}.items()})
        log.append(done.stdout + done.stderr)
        if done.returncode != 0:
            break
        # NAME=value lines (the only form the workflow writes) set a variable for later steps
        for line in github_env.read_text(encoding="utf-8").splitlines():
            variable, _, value = line.partition("=")
            base[variable] = value
    assert done is not None, f"job {name} has no shell step"
    return Job(done.returncode, last, log[-1], "".join(log))


def evaluate(env: Mapping[str, Any], expressions: Mapping[str, str]) -> dict[str, str]:
    """``env`` with each ``${{ }}`` value replaced as GitHub would."""
    return {key: expressions[value] if "${{" in str(value) else str(value)
            for key, value in env.items()}


def secrets(bucket: S3Bucket | None) -> dict[str, str]:
    """The repository's secrets as the steps get them (empty on a fork's pull request)."""
    key = bucket.environ["AWS_ACCESS_KEY_ID"] if bucket else ""
    secret = bucket.environ["AWS_SECRET_ACCESS_KEY"] if bucket else ""
    return {"${{ secrets.BFL_API_KEY }}": KEY if bucket else "",
            "${{ secrets.KONTEXT_CACHE_KEY_ID }}": key,
            "${{ secrets.KONTEXT_CACHE_SECRET }}": secret,
            "${{ secrets.KONTEXT_CACHE_READ_KEY_ID }}": key,
            "${{ secrets.KONTEXT_CACHE_READ_SECRET }}": secret,
            "${{ github.token }}": "a-token-for-gh"}


def settings(bucket: S3Bucket, server: BackgroundServer, recipes: str) -> dict[str, str]:
    """The workflow's variables as a user sets them for this bucket (a store with an endpoint
    of its own, as R2's or MinIO's), and the bundled server in place of the API."""
    return {"RECIPES": recipes, "KONTEXT_SHARED_CACHE": bucket.url,
            "AWS_REGION": bucket.environ["AWS_REGION"],
            "AWS_ENDPOINT_URL": bucket.environ["AWS_ENDPOINT_URL"],
            "AWS_ALLOW_HTTP": bucket.environ["AWS_ALLOW_HTTP"], "BFL_API_BASE": server.url}


def upload_artifact(folder: Path) -> dict[str, bytes]:
    """What actions/upload-artifact@v4 keeps of ``path: folder``: its files by their path in it,
    but the hidden ones (``include-hidden-files`` is false)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in
                                       p.relative_to(folder).parts)}


def download_artifacts(artifacts: Mapping[str, Mapping[str, bytes]], into: Path) -> None:
    """What actions/download-artifact@v4 does with a ``pattern``: each artifact in a folder
    named after it."""
    for name, files in artifacts.items():
        for relative, data in files.items():
            target = into / name / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)


def images(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.suffix in (".png", ".jpg")}


def objects(bucket: S3Bucket) -> dict[str, bytes]:
    return bucket.server.objects(bucket.name)


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    """A bare repository whose main branch holds two recipes (one of 6 variants) and their
    input image, committed by a local identity."""
    bare = tmp_path / "origin.git"
    git(tmp_path, "init", "--quiet", "--bare", "--initial-branch", "main", str(bare))
    seed = tmp_path / "seed"
    git(tmp_path, "init", "--quiet", "--initial-branch", "main", str(seed))
    git(seed, "config", "user.name", "A Maintainer")
    git(seed, "config", "user.email", "maintainer@example.com")
    (seed / "pipelines" / "images").mkdir(parents=True)
    for name in STEPS:
        shutil.copy(PIPELINES / f"{name}.yaml", seed / "pipelines")
    shutil.copy(PIPELINES / "images" / "street.jpg", seed / "pipelines" / "images")
    commit_all(seed, "Add the recipes")
    git(seed, "push", "--quiet", str(bare), "main")
    return bare


@pytest.mark.parametrize("names", [["color-matrix", "poster-chain"], ["color-matrix"]],
                         ids=["two recipes", "one recipe"])
def test_shards_fill_the_bucket_collect_requests_nothing_and_publishes_one_merged_report(
        tmp_path: Path, origin: Path, bfl_server: Start, s3_bucket: S3Bucket,
        names: list[str]) -> None:
    server = bfl_server(latency=0.02)
    recipes = "pipelines/*.yaml" if len(names) > 1 else f"pipelines/{names[0]}.yaml"
    setting = settings(s3_bucket, server, recipes)
    start = git(origin, "rev-parse", "main")
    # with several recipes, each has a folder of its own in OUT_DIR and in the merged report
    folder = {name: name if len(names) > 1 else "" for name in names}
    made = sum(STEPS[name] for name in names)

    def shard(number: int) -> tuple[Job, dict[str, bytes]]:
        workspace = checkout(origin, tmp_path / f"shard-{number}")
        done = run_job(SHARDS_JOB, workspace, setting, {
            **secrets(s3_bucket), "${{ matrix.shard }}": str(number),
            "${{ strategy.job-total }}": str(len(shard_numbers()))})
        return done, upload_artifact(workspace / "kontext-shard")

    with ThreadPoolExecutor(max_workers=len(shard_numbers())) as pool:
        shards = list(pool.map(shard, shard_numbers()))
    for done, _files in shards:
        assert done.returncode == 0, done.log
    # every step made once, by one shard or another, and every result in the bucket
    assert sum(server.state.submits.values()) == made
    stored = objects(s3_bucket)
    assert len([key for key in stored if key.startswith("team/v1/")]) == made == len(stored)
    uploaded = [int(line.split(": ")[1].split()[0]) for done, _ in shards
                for line in done.log.splitlines()
                if line.startswith(f"shared cache {s3_bucket.url}: ")]
    assert sum(uploaded) == made

    # collect: an empty local cache, every result from the bucket; no key, no request, no write
    workspace = checkout(origin, tmp_path / "collect")
    download_artifacts({f"kontext-shard-{number}": files
                        for number, (_, files) in zip(shard_numbers(), shards, strict=True)},
                       workspace / "kontext-shards")
    before = len(server.state.requests)
    collected = run_job(COLLECT_JOB, workspace, setting, secrets(s3_bucket))
    assert collected.returncode == 0, collected.log
    assert len(server.state.requests) == before
    assert objects(s3_bucket) == stored
    for name in names:
        assert f"{name}: {STEPS[name]} steps, {STEPS[name]} cached, 0 made" in collected.log
    assert git(origin, "log", "--format=%an <%ae>|%s", "-1", "main") == (
        f"{BOT}|kontext-pipeline: images and locks for {start} [skip ci]")
    files = tracked(origin)
    assert {f"pipelines/{name}.lock" for name in names} <= set(files)
    assert not [f for f in files if f.endswith(("manifest.json", "report.html",
                                                ".kontext-export.json"))]

    # the merged report: every step as the shards made it (not as collect found it), and the
    # very images that were committed
    for name in names:
        merged_folder = workspace / MERGED / folder[name]
        merged = read_manifest(merged_folder / MANIFEST)
        assert (merged.pipeline, merged.shard) == (name, None)
        assert (merged.totals.steps, merged.totals.calls, merged.totals.cache_hits) == (
            STEPS[name], STEPS[name], 0)
        assert (merged_folder / "report.html").is_file()
        committed = images(workspace / "assets" / folder[name])
        assert images(merged_folder) == committed
        assert len(committed) == STEPS[name]
        assert {f"assets/{f}" if not folder[name] else f"assets/{folder[name]}/{f}"
                for f in committed} <= set(files)
    assert collected.log.count(f"{len(shard_numbers())} shards merged") == len(names)

    # a pull request on the published commit: it reads the bucket (read-only), checks, passes
    pull = checkout(origin, tmp_path / "pull-request")
    checked = run_job(CHECK_JOB, pull, setting, secrets(s3_bucket))
    assert checked.returncode == 0, checked.log
    assert len(server.state.requests) == before
    assert objects(s3_bucket) == stored


def test_a_pull_request_plans_from_the_bucket_and_a_forks_leaves_it_out(
        tmp_path: Path, origin: Path, bfl_server: Start, s3_bucket: S3Bucket) -> None:
    server = bfl_server(latency=0.02)
    setting = settings(s3_bucket, server, "pipelines/color-matrix.yaml")
    # a colleague ran the recipe with a key and the shared cache, and committed nothing yet
    colleague = checkout(origin, tmp_path / "colleague")
    ran = run_script(f'kontext-pipeline run "$RECIPES" --shared-cache "{s3_bucket.url}" '
                     "--cache-dir cache --out out", colleague,
                     {**setting, **s3_bucket.environ, "BFL_API_KEY": KEY})
    assert ran.returncode == 0, ran.stderr
    stored = objects(s3_bucket)
    assert len(stored) == STEPS["color-matrix"]
    before = len(server.state.requests)

    # the pull request's plan finds every step in the bucket: merging costs nothing; its check
    # wants the lock; nothing is requested, nothing written to the bucket
    pull = checkout(origin, tmp_path / "pull-request")
    checked = run_job(CHECK_JOB, pull, setting, secrets(s3_bucket))
    assert "12 of 12 cached (12 in the shared cache); the rest cost 0 credits ($0.00)" in \
        checked.log
    assert (checked.returncode, checked.last_step) == (3, running(CHECK_JOB, "check")["name"])
    assert "no lock file (pipelines/color-matrix.lock)" in checked.output
    assert "pipelines/color-matrix.yaml: the shared cache holds 12 of the 12 steps that " \
        "changed" in checked.output
    assert len(server.state.requests) == before
    assert objects(s3_bucket) == stored

    # a fork's pull request gets no secrets: its plan leaves the bucket out, with a notice
    fork = run_job(CHECK_JOB, checkout(origin, tmp_path / "fork"), setting, secrets(None))
    assert (fork.returncode, fork.last_step) == (3, running(CHECK_JOB, "check")["name"])
    assert "::notice::no credentials for the shared cache (secrets do not reach a pull " \
           "request from a fork): plan and check leave the bucket out\n" in fork.log
    assert "0 of 12 cached; the rest cost 48 credits ($0.48)" in fork.log
    assert "the shared cache holds" not in fork.log
    assert "warning" not in fork.log
    assert len(server.state.requests) == before


def test_a_shard_stops_while_the_bucket_is_the_placeholder(tmp_path: Path, origin: Path) -> None:
    workspace = checkout(origin, tmp_path / "shard-1")
    stopped = run_job(SHARDS_JOB, workspace, {}, {
        **secrets(None), "${{ matrix.shard }}": "1", "${{ strategy.job-total }}": "4"})
    assert (stopped.returncode, stopped.last_step) == (1, running(SHARDS_JOB, "run")["name"])
    assert stopped.output == (
        "::error::KONTEXT_SHARED_CACHE is still the placeholder s3://BUCKET/kontext-pipeline: "
        "set it, at the top of this workflow, to your bucket\n")
    assert not (workspace / "kontext-shard").exists()
