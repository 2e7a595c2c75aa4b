"""The workflow under docs/github-actions/, its shell steps run as GitHub runs them, in order, in
git repositories of their own (a bare ``origin`` and clones of it, as actions/checkout makes)
against the bundled server: main runs the recipe and commits its images and lock back; a pull
request's ``check`` passes on that commit with no key and no cache, and fails (exit 3) once a
prompt changes; with the cache gone, main requests nothing again.

The steps that use actions are not run; the test does what they do: checkout is a clone of
``origin``; setup-python is this interpreter's folder first on PATH; the cache is one folder
kept between jobs (restored and saved), or deleted (evicted); the artifact is not uploaded. The
install step is tests/test_ci_install.py's."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from kontext_pipeline import Cache
from kontext_pipeline.server._run import BackgroundServer
from tests.bfl_helpers import KEY
from tests.conftest import PIPELINES, Start
from tests.test_ci_files import CHECK_JOB, RUN_JOB, run_step, steps

RECIPE = "pipelines/poster-chain.yaml"
LOCK = "pipelines/poster-chain.lock"
IMAGES = ["assets/poster.png", "assets/recolored.png", "assets/steps/sign.png"]
NOT_COMMITTED = ("manifest.json", "report.html", ".kontext-export.json")
BOT = "github-actions[bot] <41898282+github-actions[bot]@users.noreply.github.com>"
INSTALL = "Install kontext-pipeline"  # tests/test_ci_install.py runs it
# what each ${{ }} in a step's env is on GitHub, here
EXPRESSIONS = {"${{ secrets.BFL_API_KEY }}": KEY, "${{ github.token }}": "a-token-for-gh"}
# git reads no configuration but the repositories' own, and no identity but the one set there
GIT_ENV = {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}

pytestmark = pytest.mark.skipif(shutil.which("git") is None or shutil.which("bash") is None,
                                reason="the workflow's steps are bash, and they run git")


def git(workdir: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=workdir, capture_output=True, text=True,
                          check=False, timeout=60, env={**os.environ, **GIT_ENV})
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


def commit_all(workdir: Path, message: str) -> None:
    git(workdir, "add", "--all")
    git(workdir, "commit", "--quiet", "--message", message)


@dataclass(frozen=True)
class Job:
    """How a job ended: the exit status of its last step (0: every step passed), that step's
    name and what it printed, and what every step printed (stdout and stderr each)."""

    returncode: int
    last_step: str
    output: str
    log: str


def run_job(name: str, workspace: Path, **env: str) -> Job:
    """Run job ``name``'s shell steps in ``workspace`` in order, as GitHub would: each with the
    workflow's env, the step's own (its expressions replaced), the default variables the
    scripts read, and ``env``; the first step that fails ends the job."""
    github = {"GITHUB_SHA": git(workspace, "rev-parse", "HEAD"),
              "GITHUB_REF_NAME": "main", **GIT_ENV}
    log: list[str] = []
    last, done = "", None
    for step in steps(name):
        if "uses" in step or step["name"] == INSTALL:
            continue
        assert "if" not in step, step  # every script runs after the ones before it passed
        step_env: dict[str, str] = {key: EXPRESSIONS[value] if "${{" in value else value
                                    for key, value in step.get("env", {}).items()}
        last = step["name"]
        done = run_step(step["run"], workspace, variables={**github, **step_env, **env})
        log.append(done.stdout + done.stderr)
        if done.returncode != 0:
            break
    assert done is not None, f"job {name} has no shell step"
    return Job(done.returncode, last, log[-1], "".join(log))


def checkout(origin: Path, into: Path, ref: str = "main") -> Path:
    """What actions/checkout does: a clone of ``origin`` at ``ref``."""
    git(origin.parent, "clone", "--quiet", "--branch", ref, str(origin), str(into))
    return into


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    """A bare repository whose main branch holds the recipe and its input image, committed by
    a local identity."""
    bare = tmp_path / "origin.git"
    git(tmp_path, "init", "--quiet", "--bare", "--initial-branch", "main", str(bare))
    seed = tmp_path / "seed"
    git(tmp_path, "init", "--quiet", "--initial-branch", "main", str(seed))
    git(seed, "config", "user.name", "A Maintainer")
    git(seed, "config", "user.email", "maintainer@example.com")
    (seed / "pipelines" / "images").mkdir(parents=True)
    shutil.copy(PIPELINES / "poster-chain.yaml", seed / RECIPE)
    shutil.copy(PIPELINES / "images" / "street.jpg", seed / "pipelines" / "images")
    commit_all(seed, "Add the poster recipe")
    git(seed, "push", "--quiet", str(bare), "main")
    return bare


def identify(workspace: Path) -> Path:
    git(workspace, "config", "user.name", "A Contributor")
    git(workspace, "config", "user.email", "contributor@example.com")
    return workspace


def tracked(origin: Path, ref: str = "main") -> list[str]:
    return git(origin, "ls-tree", "-r", "--name-only", ref).splitlines()


def locked_steps(origin: Path, ref: str = "main") -> list[dict[str, Any]]:
    """Every step the committed lock records."""
    lock: dict[str, Any] = yaml.safe_load(git(origin, "show", f"{ref}:{LOCK}"))
    return [step for steps_ in lock["variants"].values() for step in steps_.values()]


def locked_files(origin: Path, ref: str = "main") -> list[str]:
    """Every file the committed lock records, as a path in the repository."""
    return sorted(os.path.normpath(os.path.join("pipelines", file["path"]))
                  for step in locked_steps(origin, ref) for file in step["files"])


def requests(server: BackgroundServer) -> int:
    return len(server.state.requests)


def main_job(origin: Path, workspace: Path, server: BackgroundServer, cache: Path,
             **env: str) -> Job:
    return run_job(RUN_JOB, checkout(origin, workspace), BFL_API_BASE=server.url,
                   KONTEXT_CACHE_DIR=str(cache), **env)


def test_main_publishes_pull_requests_check_and_an_evicted_cache_costs_nothing(
        tmp_path: Path, origin: Path, bfl_server: Start) -> None:
    server = bfl_server(latency=0.02)
    cache = tmp_path / "cache"  # what actions/cache restores and saves, between the jobs
    start = git(origin, "rev-parse", "main")

    made = main_job(origin, tmp_path / "main-1", server, cache)
    assert made.returncode == 0, made.log
    assert sum(server.state.submits.values()) == 3
    published = git(origin, "rev-parse", "main")
    assert git(origin, "log", "--format=%an <%ae>|%s", "-1", "main") == (
        f"{BOT}|kontext-pipeline: images and locks for {start} [skip ci]")
    assert git(origin, "rev-parse", "main~1") == start
    files = tracked(origin)
    assert {LOCK, *IMAGES} <= set(files)
    assert not [f for f in files if f.endswith(NOT_COMMITTED)]
    assert locked_files(origin) == sorted(IMAGES)

    # a pull request on that commit: no key, no cache (none is restored), no request
    pull = identify(checkout(origin, tmp_path / "pull-request"))
    git(pull, "switch", "--quiet", "--create", "edit-the-prompt")
    before = requests(server)
    checked = run_job(CHECK_JOB, pull, BFL_API_BASE=server.url)
    assert checked.returncode == 0, checked.log
    assert not (pull / ".kontext-cache").exists()
    assert requests(server) == before

    recipe = pull / RECIPE
    recipe.write_text(recipe.read_text(encoding="utf-8").replace(
        "keep everything else unchanged", "keep the rest as it is"), encoding="utf-8")
    commit_all(pull, "Reword the recolor prompt")
    stale = run_job(CHECK_JOB, pull, BFL_API_BASE=server.url)
    assert (stale.returncode, stale.last_step) == (
        3, "Check the recipes against their locks and the committed images (no key, no cache)")
    assert stale.output.splitlines()[-3:] == [
        f"  {RECIPE}: default / recolor: prompt changed: … to blue, keep "
        "[-everything else unchanged-]{+the rest as it is+}",
        f"  {RECIPE}: default / sign: input from step 'recolor' changed",
        f"  {RECIPE}: default / relight: input from step 'sign' changed"]
    lenient = run_job(CHECK_JOB, pull, OUT_OF_DATE="warn")
    assert lenient.returncode == 0, lenient.log
    assert "::warning::the recipes no longer match their locks and images" in lenient.log
    assert requests(server) == before

    # the cache is evicted: main takes everything from the lock and the committed images
    shutil.rmtree(cache)
    again = main_job(origin, tmp_path / "main-2", server, cache)
    assert again.returncode == 0, again.log
    assert requests(server) == before
    assert "The images and the locks are committed already: nothing to publish." in again.log
    assert git(origin, "rev-parse", "main") == published
    refilled = Cache(cache)
    assert [refilled.lookup(step["key"]).problem for step in locked_steps(origin)] == [None] * 3
    assert all(refilled.lookup(step["key"]).entry for step in locked_steps(origin))

    # the pull request merged: main makes the three steps again and publishes them
    git(pull, "push", "--quiet", "origin", "HEAD:main")
    merged = git(origin, "rev-parse", "main")
    remade = main_job(origin, tmp_path / "main-3", server, cache)
    assert remade.returncode == 0, remade.log
    assert sum(server.state.submits.values()) == 6
    assert git(origin, "rev-parse", "main~1") == merged
    assert locked_files(origin) == sorted(IMAGES)
    after = identify(checkout(origin, tmp_path / "pull-request-2"))
    assert run_job(CHECK_JOB, after).returncode == 0


def test_main_rebases_its_commit_when_main_moved_on_during_the_run(
        tmp_path: Path, origin: Path, bfl_server: Start) -> None:
    server = bfl_server(latency=0.02)
    workspace = checkout(origin, tmp_path / "main")
    other = identify(checkout(origin, tmp_path / "other"))
    (other / "README.md").write_text("Posters.\n", encoding="utf-8")
    commit_all(other, "Say what the repository holds")
    git(other, "push", "--quiet", "origin", "main")
    moved = git(origin, "rev-parse", "main")

    made = run_job(RUN_JOB, workspace, BFL_API_BASE=server.url,
                   KONTEXT_CACHE_DIR=str(tmp_path / "cache"))
    assert made.returncode == 0, made.log
    assert git(origin, "rev-parse", "main~1") == moved
    assert {LOCK, "README.md", *IMAGES} <= set(tracked(origin))


def test_main_can_publish_through_a_pull_request_instead(
        tmp_path: Path, origin: Path, bfl_server: Start) -> None:
    server = bfl_server(latency=0.02)
    start = git(origin, "rev-parse", "main")
    # gh talks to GitHub: here it is a script that records its arguments and finds no open
    # pull request
    tools, calls = tmp_path / "tools", tmp_path / "gh-calls"
    tools.mkdir()
    (tools / "gh").write_text(f'#!/bin/sh\necho "$GH_TOKEN $*" >> {calls}\n', encoding="utf-8")
    (tools / "gh").chmod(0o755)
    path = f"{Path(sys.executable).parent}{os.pathsep}{tools}{os.pathsep}{os.environ['PATH']}"

    made = main_job(origin, tmp_path / "main", server, tmp_path / "cache", PUBLISH="pull-request",
                    PATH=path)
    assert made.returncode == 0, made.log
    assert git(origin, "rev-parse", "main") == start  # main itself is untouched
    branch = "kontext-pipeline/main"
    assert git(origin, "rev-parse", f"{branch}~1") == start
    assert {LOCK, *IMAGES} <= set(tracked(origin, branch))
    assert calls.read_text(encoding="utf-8").splitlines() == [
        f"a-token-for-gh pr list --head {branch} --base main --state open --json number "
        "--jq .[].number",
        f"a-token-for-gh pr create --head {branch} --base main --title kontext-pipeline: "
        f"images and locks --body What `kontext-pipeline run` made on main at {start}. "
        "Merge it to commit the images and the locks."]


def test_publishing_stops_when_the_out_dir_is_git_ignored(
        tmp_path: Path, origin: Path, bfl_server: Start) -> None:
    server = bfl_server(latency=0.02)
    workspace = identify(checkout(origin, tmp_path / "main"))
    (workspace / ".gitignore").write_text("/assets/\n", encoding="utf-8")
    commit_all(workspace, "Ignore the exported images")
    git(workspace, "push", "--quiet", "origin", "main")
    ignoring = git(origin, "rev-parse", "main")

    refused = run_job(RUN_JOB, workspace, BFL_API_BASE=server.url,
                      KONTEXT_CACHE_DIR=str(tmp_path / "cache"))
    assert (refused.returncode, refused.last_step) == (1, "Publish the images and the locks")
    assert refused.output.endswith(
        "::error::assets is git-ignored, so its images cannot be committed: take it out of "
        ".gitignore, or set OUT_DIR to another folder\n")
    assert git(origin, "rev-parse", "main") == ignoring
