"""The files that users copy into their CI: the GitHub Actions workflow under docs/ (its
structure, and its shell steps run for real against the bundled server) and the pre-commit hook
(its entry run on valid and invalid recipes)."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import INVALID, PIPELINES, ROOT, Start

WORKFLOW = ROOT / "docs" / "github-actions" / "kontext.yml"
HOOKS = ROOT / ".pre-commit-hooks.yaml"
CI_DOC = ROOT / "docs" / "ci.md"

ON_PULL_REQUEST = "github.event_name == 'pull_request'"
ON_MAIN = "github.event_name != 'pull_request' && github.ref == 'refs/heads/main'"
KEY_FROM_SECRETS = "${{ secrets.BFL_API_KEY }}"

# pre-commit's manifest keys (pre_commit.clientlib.MANIFEST_HOOK_DICT)
HOOK_KEYS = {"id", "name", "entry", "language", "alias", "files", "exclude", "types", "types_or",
             "exclude_types", "additional_dependencies", "args", "always_run", "fail_fast",
             "pass_filenames", "description", "language_version", "log_file",
             "require_serial", "stages", "verbose", "minimum_pre_commit_version"}


@functools.cache
def load_workflow() -> dict[Any, Any]:
    workflow: dict[Any, Any] = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    return workflow


def triggers(workflow: dict[Any, Any]) -> dict[str, Any]:
    # PyYAML reads YAML 1.1, where a bare `on` is the boolean true; GitHub reads it as "on"
    found = workflow.get("on", workflow.get(True))
    assert isinstance(found, dict), found
    return found


def steps() -> list[dict[str, Any]]:
    (job,) = load_workflow()["jobs"].values()
    found: list[dict[str, Any]] = job["steps"]
    return found


def step(predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    (found,) = [s for s in steps() if predicate(s)]
    return found


def uses(action: str) -> Callable[[dict[str, Any]], bool]:
    return lambda s: str(s.get("uses", "")).startswith(action + "@")


def runs(*words: str) -> Callable[[dict[str, Any]], bool]:
    return lambda s: "kontext-pipeline run" in s.get("run", "") and all(
        w in s["run"] for w in words)


def frozen_step() -> dict[str, Any]:
    return step(runs("--frozen"))


def real_run_step() -> dict[str, Any]:
    return step(lambda s: runs()(s) and "--frozen" not in s["run"])


def test_the_workflow_runs_on_pull_requests_and_on_main() -> None:
    on = triggers(load_workflow())
    assert set(on) == {"pull_request", "push", "workflow_dispatch"}
    assert on["push"]["branches"] == ["main"]
    assert on["pull_request"]["paths"] == on["push"]["paths"]
    assert "pipelines/**" in on["push"]["paths"]
    assert load_workflow()["permissions"] == {"contents": "read"}


def test_pull_requests_run_frozen_without_a_key() -> None:
    frozen = frozen_step()
    assert frozen["if"] == ON_PULL_REQUEST
    assert "env" not in frozen
    assert "kontext-pipeline run $RECIPES --frozen --out out" in frozen["run"]
    plan = step(lambda s: "kontext-pipeline plan" in s.get("run", ""))
    assert plan["if"] == ON_PULL_REQUEST


def test_the_secret_reaches_only_the_real_run_on_main() -> None:
    real = real_run_step()
    assert real["if"] == ON_MAIN
    assert real["env"] == {"BFL_API_KEY": KEY_FROM_SECRETS}
    assert "--max-credits" in real["run"]
    workflow = load_workflow()
    others = [s for s in steps() if s is not real]
    job = {k: v for k, v in workflow["jobs"]["recipes"].items() if k != "steps"}
    for part in (workflow["env"], job, *others):
        assert "secrets." not in json.dumps(part)
    assert WORKFLOW.read_text().count("secrets.") == 1


def test_the_cache_is_restored_always_and_saved_on_main_even_after_a_failure() -> None:
    workflow = load_workflow()
    cache_dir = workflow["env"]["KONTEXT_CACHE_DIR"]
    restore = step(uses("actions/cache/restore"))
    save = step(uses("actions/cache/save"))
    assert "if" not in restore
    assert restore["with"]["path"] == save["with"]["path"] == cache_dir
    key = restore["with"]["key"]
    assert key.startswith("kontext-${{ hashFiles('pipelines/**') }}-")
    assert "${{ github.run_id }}" in key
    assert restore["with"]["restore-keys"].splitlines() == [
        "kontext-${{ hashFiles('pipelines/**') }}-", "kontext-"]
    assert save["if"] == f"always() && {ON_MAIN}"
    assert save["with"]["key"] == f"${{{{ steps.{restore['id']}.outputs.cache-primary-key }}}}"
    order = steps()
    assert order.index(restore) < order.index(frozen_step()) < order.index(save)
    assert order.index(real_run_step()) < order.index(save)


def test_the_report_and_the_manifest_are_uploaded_whatever_happened() -> None:
    upload = step(uses("actions/upload-artifact"))
    assert upload["if"] == "always()"
    assert upload["with"]["path"].splitlines() == ["out/**/report.html", "out/**/manifest.json"]
    assert steps()[-1] is upload


def test_run_scripts_hold_no_expressions() -> None:
    # values reach the scripts through env only, never pasted in by ${{ }} (script injection)
    assert all("${{" not in s["run"] for s in steps() if "run" in s)


def run_step(script: str, workdir: Path, *, bin_dir: Path | None = None, timeout: float = 60,
             **env: str) -> subprocess.CompletedProcess[str]:
    """Run a step's script as GitHub runs it (bash -eo pipefail), the workflow's env set, with
    ``bin_dir`` (default: this Python's) first on PATH, as actions/setup-python puts its own."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("BFL_", "KONTEXT_"))}
    environment.update(load_workflow()["env"])
    environment.update(env)
    first = bin_dir or Path(sys.executable).parent
    environment["PATH"] = f"{first}{os.pathsep}{environment['PATH']}"
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
                          cwd=workdir, env=environment, capture_output=True, text=True,
                          check=False, timeout=timeout)


@pytest.mark.skipif(shutil.which("bash") is None, reason="the workflow's steps are bash")
def test_the_workflow_steps_work_on_a_pull_request_then_on_main(
        tmp_path: Path, bfl_server: Start) -> None:
    (tmp_path / "pipelines").mkdir()
    for recipe in ("text-to-image.yaml", "poster-chain.yaml"):
        shutil.copy(PIPELINES / recipe, tmp_path / "pipelines" / recipe)
    shutil.copytree(PIPELINES / "images", tmp_path / "pipelines" / "images")
    frozen = frozen_step()["run"]

    validated = run_step(step(lambda s: "validate" in s.get("run", ""))["run"], tmp_path)
    assert validated.returncode == 0, validated.stderr
    planned = run_step(step(lambda s: "kontext-pipeline plan" in s.get("run", ""))["run"],
                       tmp_path)
    assert planned.returncode == 0, planned.stderr
    assert "0 of 3 cached; the rest cost 16 credits ($0.16)" in planned.stdout

    strict = run_step(frozen, tmp_path, FROZEN_MISSES="fail")
    assert strict.returncode == 3
    assert "--frozen: 6 steps not in the cache; no provider was called:" in strict.stderr
    lenient = run_step(frozen, tmp_path)
    assert lenient.returncode == 0
    assert lenient.stdout.startswith("::warning::some steps are not cached yet")

    server = bfl_server(latency=0.02)
    real = run_step(real_run_step()["run"], tmp_path, BFL_API_KEY="bfl_from_the_secret",
                    BFL_API_BASE=server.url)
    assert real.returncode == 0, real.stderr
    over_budget = run_step(real_run_step()["run"], tmp_path, BFL_API_KEY="bfl_from_the_secret",
                           BFL_API_BASE=server.url, MAX_CREDITS="3",
                           KONTEXT_CACHE_DIR=str(tmp_path / "empty-cache"))
    assert over_budget.returncode == 3

    shutil.rmtree(tmp_path / "out")
    cached = run_step(frozen, tmp_path, FROZEN_MISSES="fail")
    assert cached.returncode == 0, cached.stderr
    assert "::warning::" not in cached.stdout
    uploaded = sorted(str(p.relative_to(tmp_path)) for pattern in ("report.html", "manifest.json")
                      for p in (tmp_path / "out").glob(f"**/{pattern}"))
    assert uploaded == ["out/poster-chain/manifest.json", "out/poster-chain/report.html",
                        "out/text-to-image/manifest.json", "out/text-to-image/report.html"]
    manifest = json.loads((tmp_path / "out" / "poster-chain" / "manifest.json").read_text())
    assert manifest["provider"] == "bfl"
    assert manifest["totals"]["cache_hits"] == 3


@functools.cache
def load_hooks() -> list[dict[str, Any]]:
    hooks: list[dict[str, Any]] = yaml.safe_load(HOOKS.read_text(encoding="utf-8"))
    return hooks


def test_the_pre_commit_hook_is_a_valid_manifest() -> None:
    (hook,) = load_hooks()
    assert set(hook) <= HOOK_KEYS
    assert {"id", "name", "entry", "language"} <= set(hook)
    assert hook["id"] == "kontext-pipeline-validate"
    assert hook["entry"] == "kontext-pipeline validate"
    assert hook["language"] == "python"
    assert hook["types"] == ["yaml"]


@pytest.mark.parametrize(("path", "checked"), [
    ("pipelines/poster-chain.yaml", True),
    ("pipelines/cookbook/object-change.yaml", True),
    ("pipelines/recipe.yml", True),
    ("assets/pipelines/poster.yaml", True),
    (".pre-commit-config.yaml", False),
    (".pre-commit-hooks.yaml", False),
    (".github/workflows/kontext.yml", False),
    ("docs/github-actions/kontext.yml", False),
    ("pipelines/images/street.jpg", False),
    ("pipelines/pipeline.schema.json", False),
    ("kontext_pipeline/schemas/pipeline.schema.json", False),
    ("my-pipelines/recipe.yaml", False),
])
def test_the_hook_checks_the_yaml_files_under_pipelines(path: str, checked: bool) -> None:
    (hook,) = load_hooks()
    assert bool(re.search(hook["files"], path)) is checked


def run_hook(*files: Path) -> subprocess.CompletedProcess[str]:
    """Run the hook's entry as pre-commit does: the console script, then the file names."""
    (hook,) = load_hooks()
    command, *args = hook["entry"].split()
    script = Path(sys.executable).parent / command
    assert script.is_file(), f"{command} is not installed next to {sys.executable}"
    return subprocess.run([str(script), *args, *map(str, files)], cwd=ROOT, capture_output=True,
                          text=True, check=False, timeout=60)


def test_the_hook_passes_every_recipe_it_would_check_in_this_repository() -> None:
    (hook,) = load_hooks()
    recipes = sorted(p for p in PIPELINES.rglob("*")
                     if re.search(hook["files"], p.relative_to(ROOT).as_posix()))
    assert len(recipes) >= 7
    result = run_hook(*recipes)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": ok (") == len(recipes)


def test_the_hook_fails_an_invalid_recipe_with_its_position() -> None:
    invalid = INVALID / "many-problems.yaml"
    result = run_hook(PIPELINES / "poster-chain.yaml", invalid)
    assert result.returncode == 2
    assert result.stdout.startswith(f"{PIPELINES / 'poster-chain.yaml'}: ok (")
    assert result.stderr.splitlines()[-1] == f"kontext-pipeline: 8 problems in {invalid}"


def test_the_configurations_in_the_docs_use_the_hook_as_shipped() -> None:
    (hook,) = load_hooks()
    blocks = re.findall(r"```yaml\n(.*?)```", CI_DOC.read_text(encoding="utf-8"), re.S)
    configs = [yaml.safe_load(b) for b in blocks]
    used = [h for config in configs for repo in config["repos"] for h in repo["hooks"]]
    assert [h["id"] for h in used] == [hook["id"], hook["id"]]
    local = used[1]
    assert (local["entry"], local["files"], local["types"]) == \
        (hook["entry"], hook["files"], hook["types"])
    assert local["language"] == "system"
