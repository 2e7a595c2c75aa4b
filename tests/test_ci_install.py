"""kontext-pipeline installed the way the files users copy install it, from a local clone of this
repository (``git clone``, no network): the workflow's install step, with only the repository's
URL swapped for the clone's, into a fresh virtual environment; and the pre-commit configuration
in docs/ci.md, with only its ``repo:`` swapped, run by pre-commit itself. Both take the
dependencies from the package index, as they do for users (a few seconds each here)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.conftest import INVALID, PIPELINES, ROOT
from tests.test_ci_files import (
    CHECK_JOB,
    CI_DOC,
    RUN_JOB,
    WORKFLOW,
    load_workflow,
    named,
    run_step,
    runs,
    step,
)

PLACEHOLDER = "https://github.com/OWNER/kontext-pipeline"
INSTALL_TIMEOUT = 300  # seconds: a fresh environment, its dependencies and a build, under load

pytestmark = pytest.mark.skipif(
    shutil.which("git") is None or shutil.which("bash") is None or not (ROOT / ".git").exists(),
    reason="needs git, bash and this repository's history")


def install_step() -> str:
    """The install step's script, the same in both jobs."""
    script: str = step(CHECK_JOB, named("Install kontext-pipeline"))["run"]
    assert step(RUN_JOB, named("Install kontext-pipeline"))["run"] == script
    return script


def pinned() -> tuple[str, str]:
    """The repository and the tag or commit the workflow installs."""
    env = load_workflow()["env"]
    return env["KONTEXT_PIPELINE_REPO"], env["KONTEXT_PIPELINE_REF"]


def pre_commit_config() -> str:
    """The configuration docs/ci.md tells users to add (its first YAML block)."""
    block: str = re.findall(r"```yaml\n(.*?)```", CI_DOC.read_text(encoding="utf-8"), re.S)[0]
    return block


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without what would steer git, pre-commit or a virtual
    environment elsewhere (a git hook's GIT_DIR, an active VIRTUAL_ENV), nor a key."""
    drop = ("GIT_", "PRE_COMMIT", "VIRTUAL_ENV", "BFL_", "KONTEXT_")
    return {**{k: v for k, v in os.environ.items() if not k.startswith(drop)}, **extra}


def git(*args: str | Path) -> str:
    done = subprocess.run(["git", *map(str, args)], capture_output=True, text=True, check=True,
                          env=clean_environment(), timeout=120)
    return done.stdout.strip()


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This repository's last commit, cloned, and tagged with the ref the files pin."""
    clone = tmp_path_factory.mktemp("upstream") / "kontext-pipeline"
    git("clone", "--quiet", "--no-hardlinks", ROOT, clone)
    git("-C", clone, "tag", "--force", pinned()[1], "HEAD")
    return clone


def test_the_files_pin_this_version_in_one_place() -> None:
    repo, ref = pinned()
    assert (repo, ref) == (PLACEHOLDER, f"v{version('kontext-pipeline')}")
    config = pre_commit_config()
    assert f"repo: {repo} " in config
    assert f"rev: {ref} " in config
    assert WORKFLOW.read_text(encoding="utf-8").count(repo) == 1


def test_the_install_step_stops_at_the_placeholder(tmp_path: Path) -> None:
    result = run_step(install_step(), tmp_path)
    assert result.returncode == 1
    assert result.stdout == (
        f"::error::KONTEXT_PIPELINE_REPO is still the placeholder {PLACEHOLDER}: set it, at the "
        "top of this workflow, to the git repository you get kontext-pipeline from\n")
    assert result.stderr == ""  # pip never ran


def test_the_install_step_installs_the_pinned_ref_into_a_fresh_environment(
        upstream: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120,
                   env=clean_environment())
    # file://localhost/…: pip (before 23.3) refuses `name @ git+file:///…`, an URL with no host
    url = f"file://localhost{upstream.as_posix()}"
    bin_dir = venv / "bin"
    installed = run_step(install_step(), tmp_path, bin_dir=bin_dir, timeout=INSTALL_TIMEOUT,
                         KONTEXT_PIPELINE_REPO=url)
    assert installed.returncode == 0, installed.stdout + installed.stderr

    shown = subprocess.run([str(bin_dir / "kontext-pipeline"), "--version"], capture_output=True,
                           text=True, check=False, timeout=60, env=clean_environment())
    assert shown.stdout == f"kontext-pipeline, version {version('kontext-pipeline')}\n"
    origin = subprocess.run(
        [str(bin_dir / "python"), "-c", "from importlib.metadata import distribution; "
         "print(distribution('kontext-pipeline').read_text('direct_url.json'))"],
        capture_output=True, text=True, check=True, timeout=60, env=clean_environment())
    assert json.loads(origin.stdout) == {
        "url": url, "vcs_info": {"vcs": "git", "requested_revision": pinned()[1],
                                 "commit_id": git("-C", upstream, "rev-parse", "HEAD")}}

    (tmp_path / "pipelines").mkdir()
    shutil.copy(PIPELINES / "poster-chain.yaml", tmp_path / "pipelines")
    shutil.copytree(PIPELINES / "images", tmp_path / "pipelines" / "images")
    validated = run_step(step(CHECK_JOB, runs("validate"))["run"], tmp_path,
                         bin_dir=bin_dir)  # the next step: the schema was installed too
    assert validated.returncode == 0, validated.stderr
    assert validated.stdout.startswith("pipelines/poster-chain.yaml: ok (")


def pre_commit(work: Path, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pre_commit", "run", "--all-files",
                           "--color", "never"], cwd=work, capture_output=True, text=True,
                          check=False, timeout=INSTALL_TIMEOUT,
                          env=clean_environment(PRE_COMMIT_HOME=str(home)))


def test_the_pre_commit_configuration_installs_and_runs_the_hook(
        upstream: Path, tmp_path: Path) -> None:
    work, home = tmp_path / "project", tmp_path / "pre-commit-home"
    (work / "pipelines").mkdir(parents=True)
    (work / ".github" / "workflows").mkdir(parents=True)
    config = pre_commit_config()
    assert config.count(PLACEHOLDER) == 1
    (work / ".pre-commit-config.yaml").write_text(config.replace(PLACEHOLDER, str(upstream)),
                                                  encoding="utf-8")
    shutil.copy(PIPELINES / "text-to-image.yaml", work / "pipelines")
    shutil.copy(INVALID / "many-problems.yaml", work / "pipelines" / "broken.yaml")
    shutil.copy(WORKFLOW, work / ".github" / "workflows")  # YAML, but not a recipe
    git("init", "--quiet", work)
    git("-C", work, "add", "--all")

    failed = pre_commit(work, home)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "validate kontext-pipeline recipes....." in failed.stdout
    assert "- exit code: 2" in failed.stdout
    assert "pipelines/text-to-image.yaml: ok (" in failed.stdout
    assert "kontext-pipeline: 8 problems in pipelines/broken.yaml" in failed.stdout
    assert "kontext.yml" not in failed.stdout

    git("-C", work, "rm", "--quiet", "--force", "pipelines/broken.yaml")
    passed = pre_commit(work, home)  # the environment installed above is reused
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert re.search(r"^validate kontext-pipeline recipes\.+Passed$", passed.stdout, re.M)
    assert "Installing environment" not in passed.stdout + passed.stderr
