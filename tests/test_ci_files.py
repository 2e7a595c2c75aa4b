"""The files that users copy into their CI: the GitHub Actions workflow under docs/ (its
structure; tests/test_ci_workflow.py runs its shell steps against the bundled server) and the
pre-commit hook (its entry run on valid and invalid recipes)."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import INVALID, PIPELINES, ROOT

WORKFLOW = ROOT / "docs" / "github-actions" / "kontext.yml"
HOOKS = ROOT / ".pre-commit-hooks.yaml"
CI_DOC = ROOT / "docs" / "ci.md"

ON_PULL_REQUEST = "github.event_name == 'pull_request'"
ON_MAIN = "github.event_name != 'pull_request' && github.ref == 'refs/heads/main'"
KEY_FROM_SECRETS = "${{ secrets.BFL_API_KEY }}"
CHECK_JOB, RUN_JOB = "check", "run"

# pre-commit's manifest keys (pre_commit.clientlib.MANIFEST_HOOK_DICT)
HOOK_KEYS = {"id", "name", "entry", "language", "alias", "files", "exclude", "types", "types_or",
             "exclude_types", "additional_dependencies", "args", "always_run", "fail_fast",
             "pass_filenames", "description", "language_version", "log_file",
             "require_serial", "stages", "verbose", "minimum_pre_commit_version"}

Step = dict[str, Any]


@functools.cache
def load_workflow() -> dict[Any, Any]:
    workflow: dict[Any, Any] = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    return workflow


def triggers(workflow: dict[Any, Any]) -> dict[str, Any]:
    # PyYAML reads YAML 1.1, where a bare `on` is the boolean true; GitHub reads it as "on"
    found = workflow.get("on", workflow.get(True))
    assert isinstance(found, dict), found
    return found


def job(name: str) -> dict[str, Any]:
    found: dict[str, Any] = load_workflow()["jobs"][name]
    return found


def steps(job_name: str) -> list[Step]:
    found: list[Step] = job(job_name)["steps"]
    return found


def step(job_name: str, predicate: Callable[[Step], bool]) -> Step:
    (found,) = [s for s in steps(job_name) if predicate(s)]
    return found


def uses(action: str) -> Callable[[Step], bool]:
    return lambda s: str(s.get("uses", "")).startswith(action + "@")


def runs(command: str) -> Callable[[Step], bool]:
    """The step whose script runs ``kontext-pipeline COMMAND``."""
    return lambda s: f"kontext-pipeline {command} " in s.get("run", "")


def named(name: str) -> Callable[[Step], bool]:
    return lambda s: s.get("name") == name


def test_the_workflow_runs_on_pull_requests_and_on_main() -> None:
    workflow = load_workflow()
    on = triggers(workflow)
    assert set(on) == {"pull_request", "push", "workflow_dispatch"}
    assert on["push"]["branches"] == ["main"]
    assert on["pull_request"]["paths"] == on["push"]["paths"]
    out_dir = workflow["env"]["OUT_DIR"]
    assert {"pipelines/**", f"{out_dir}/**"} <= set(on["push"]["paths"])
    assert set(workflow["jobs"]) == {CHECK_JOB, RUN_JOB}
    assert job(CHECK_JOB)["if"] == ON_PULL_REQUEST
    assert job(RUN_JOB)["if"] == ON_MAIN


def test_permissions_are_read_only_but_for_the_job_that_publishes() -> None:
    assert load_workflow()["permissions"] == {"contents": "read"}
    assert "permissions" not in job(CHECK_JOB)
    assert job(RUN_JOB)["permissions"] == {"contents": "write"}
    # the pull-request variant's permission is there, commented out, next to the one it adds to
    assert "\n      # pull-requests: write     # with PUBLISH: pull-request only\n" in \
        WORKFLOW.read_text(encoding="utf-8")


def test_pull_requests_validate_plan_and_check_without_a_key_or_a_cache() -> None:
    checkout, setup, install, *scripts = steps(CHECK_JOB)
    assert checkout == {"uses": "actions/checkout@v4", "with": {"persist-credentials": False}}
    assert uses("actions/setup-python")(setup)
    assert install == step(RUN_JOB, named("Install kontext-pipeline"))
    assert [s["run"].split("\n")[0] for s in scripts] == [
        "kontext-pipeline validate --strict $RECIPES",
        'for recipe in $RECIPES; do kontext-pipeline plan "$recipe"; done',
        "status=0"]
    assert "kontext-pipeline check $RECIPES || status=$?" in scripts[-1]["run"]
    assert all(set(s) == {"name", "run"} for s in scripts)  # no env, no condition
    assert "secrets." not in json.dumps(job(CHECK_JOB))


def test_the_secret_reaches_only_the_real_run_on_main() -> None:
    real = step(RUN_JOB, runs("run"))
    assert "if" not in real
    assert real["env"] == {"BFL_API_KEY": KEY_FROM_SECRETS}
    assert real["run"] == ('kontext-pipeline run $RECIPES --out "$OUT_DIR" '
                           '--max-credits "$MAX_CREDITS"')
    workflow = load_workflow()
    others = [s for s in steps(RUN_JOB) if s is not real]
    rest = {k: v for k, v in job(RUN_JOB).items() if k != "steps"}
    for part in (workflow["env"], rest, *others):
        assert "secrets." not in json.dumps(part)
    assert WORKFLOW.read_text().count("secrets.") == 1


def test_main_checks_what_it_made_then_publishes_it() -> None:
    order = steps(RUN_JOB)
    real, check = step(RUN_JOB, runs("run")), step(RUN_JOB, runs("check"))
    publish = step(RUN_JOB, named("Publish the images and the locks"))
    assert order.index(real) + 1 == order.index(check)
    assert order.index(check) + 1 == order.index(publish)
    assert check["run"] == "kontext-pipeline check $RECIPES"
    assert publish["env"] == {"GH_TOKEN": "${{ github.token }}"}
    assert "[skip ci]" in publish["run"]
    assert load_workflow()["env"]["PUBLISH"] == "commit"


def test_the_cache_is_restored_and_saved_on_main_even_after_a_failure() -> None:
    workflow = load_workflow()
    cache_dir = workflow["env"]["KONTEXT_CACHE_DIR"]
    restore = step(RUN_JOB, uses("actions/cache/restore"))
    save = step(RUN_JOB, uses("actions/cache/save"))
    assert "if" not in restore
    assert restore["with"]["path"] == save["with"]["path"] == cache_dir
    key = restore["with"]["key"]
    assert key.startswith("kontext-${{ hashFiles('pipelines/**') }}-")
    assert "${{ github.run_id }}" in key
    assert restore["with"]["restore-keys"].splitlines() == [
        "kontext-${{ hashFiles('pipelines/**') }}-", "kontext-"]
    assert save["if"] == "always()"
    assert save["with"]["key"] == f"${{{{ steps.{restore['id']}.outputs.cache-primary-key }}}}"
    order = steps(RUN_JOB)
    assert order.index(restore) < order.index(step(RUN_JOB, runs("run"))) < order.index(save)
    assert not [s for s in steps(CHECK_JOB) if uses("actions/cache")(s)
                or uses("actions/cache/restore")(s)]


def test_the_report_and_the_manifest_are_uploaded_whatever_happened() -> None:
    upload = step(RUN_JOB, uses("actions/upload-artifact"))
    assert upload["if"] == "always()"
    assert upload["with"]["path"].splitlines() == ["${{ env.OUT_DIR }}/**/report.html",
                                                   "${{ env.OUT_DIR }}/**/manifest.json"]
    assert steps(RUN_JOB)[-1] is upload


def test_run_scripts_hold_no_expressions() -> None:
    # values reach the scripts through env only, never pasted in by ${{ }} (script injection)
    scripts = [s["run"] for name in (CHECK_JOB, RUN_JOB) for s in steps(name) if "run" in s]
    assert len(scripts) == 9
    assert all("${{" not in script for script in scripts)


def run_step(script: str, workdir: Path, *, bin_dir: Path | None = None, timeout: float = 60,
             variables: Mapping[str, str] | None = None,
             **env: str) -> subprocess.CompletedProcess[str]:
    """Run a step's script as GitHub runs it (bash -eo pipefail), the workflow's env set, then
    ``variables`` and ``env``, with ``bin_dir`` (default: this Python's) first on PATH, as
    actions/setup-python puts its own."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("BFL_", "KONTEXT_"))}
    environment.update(load_workflow()["env"])
    environment.update(variables or {})
    environment.update(env)
    first = bin_dir or Path(sys.executable).parent
    environment["PATH"] = f"{first}{os.pathsep}{environment['PATH']}"
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
                          cwd=workdir, env=environment, capture_output=True, text=True,
                          check=False, timeout=timeout)


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


def test_ci_enforces_the_layers_contract() -> None:
    """``.ci/run`` runs import-linter as a command of its own, under ``set -euo pipefail``: a
    layer that imports a higher one fails CI."""
    commands = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert commands[0] == "set -euo pipefail"
    assert ".venv/bin/lint-imports" in commands
    before = commands[:commands.index(".venv/bin/lint-imports")]
    assert [c for c in before if re.match(r"set\s+\+[a-z]*[eu]|set\s+\+o", c)] == []
    # at the top level, not in a block whose failure is tolerated
    opened = sum(1 for c in before if re.match(r"(if|for|while|until|case)\b", c))
    closed = sum(1 for c in before if re.fullmatch(r"(fi|done|esac)\b.*", c))
    assert opened == closed
