"""``plan`` against the lock: per step, whether the lock agrees; which results the lock and the
exported files hold (no cost); which step must run again because a step after it needs its
image; and the changes a run would make to the lock."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from tests.conftest import RunCli, Start
from tests.test_check import Project


@pytest.fixture
def project(run_cli: RunCli, bfl_server: Start, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Project:
    monkeypatch.chdir(tmp_path)
    return Project(run_cli, bfl_server(latency=0.01), tmp_path)


def plan(project: Project, *args: str) -> Result:
    result = project.run_cli("plan", "recipe.yaml", "--cache-dir", str(project.cache), "--out",
                             "out", *args)
    assert result.exit_code == 0, result.output
    return result


def plan_json(project: Project, *args: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(plan(project, "--json", *args).stdout)
    return document


def details(text: str) -> list[str]:
    """The step lines' status (after the parameters), and the ``why:`` and ``lock:`` lines."""
    shown = []
    for line in text.splitlines():
        if line.startswith("  ") and " · tolerance " in line:
            shown.append(line.split("tolerance 2  ", 1)[1])
        elif line.strip().startswith(("why:", "lock:")):
            shown.append(line.strip())
    return shown


def test_the_lock_agrees_and_holds_every_result_with_the_cache_gone(project: Project) -> None:
    project.run()
    shutil.rmtree(project.cache)
    (project.root / "out" / "steps" / "recolor.png").unlink()  # an intermediate: not needed
    text = plan(project).stdout
    assert [line.split("  key ")[0] for line in details(text)] == [
        "held by the lock", "lock: agrees; file out/steps/recolor.png is missing",
        "from its exported file", "lock: agrees",
        "from its exported file", "lock: agrees"]
    assert text.endswith("\n3 of 3 cached (2 from exported files, 1 held by the lock); the rest "
                         "cost 0 credits ($0.00)\nlock recipe.lock: a run leaves it as it is\n")
    assert not any(p.is_file() for p in project.cache.rglob("*"))  # plan refills nothing


def test_a_change_shows_the_lock_diff_and_what_must_run_again_with_its_cost(
        project: Project) -> None:
    project.run()
    shutil.rmtree(project.cache)
    (project.root / "out" / "steps" / "sign.png").unlink()
    project.edit("light: golden hour", "light: blue hour")
    text = plan(project).stdout
    shown = details(text)
    assert shown[0].startswith("from its exported file  key ")
    assert shown[1] == "lock: agrees"
    assert shown[2].startswith("miss  key ")
    assert shown[2].endswith("  4 credits")
    assert shown[3:] == [
        "why: 'relight' runs again and reads its output, which neither the cache nor an "
        "exported file holds",
        "lock: agrees; file out/steps/sign.png is missing",
        "miss (after sign)  4 credits",
        "why: prompt: … the scene as [-golden-]{+blue+} hour; its input 'sign' runs again",
        "lock: prompt changed: … the scene as [-golden-]{+blue+} hour"]
    assert text.endswith("\n1 of 3 cached (1 from exported files); the rest cost 8 credits "
                         "($0.08)\nlock recipe.lock: a run adds 0, changes 1, removes 0 step "
                         "records\n  ~ default / relight\n")


def test_a_recipe_never_run_has_no_lock_yet(project: Project) -> None:
    text = plan(project).stdout
    assert [line for line in details(text) if line.startswith("lock")] == ["lock: none"] * 3
    assert text.endswith("\nlock recipe.lock: none yet; a run writes it (3 steps)\n")


def test_steps_added_and_removed_are_the_lock_diff(project: Project) -> None:
    project.run()
    project.edit("outputs:\n", "  - {id: frame, prompt: Add a frame}\noutputs:\n")
    project.edit("\n    seed: 7\n", "\n")
    document = plan_json(project)
    assert [(t["step"], t["source"], t["lock"]) for t in document["tasks"]] == [
        ("recolor", "cache", {"status": "agrees", "detail": None}),
        ("sign", None, {"status": "changed",
                        "detail": f"seed changed: 7 -> {document['tasks'][1]['seed']}"}),
        ("relight", None, {"status": "changed", "detail": "input from step 'sign' changed"}),
        ("frame", None, {"status": "none", "detail": None})]
    assert document["lock"] == {"file": "recipe.lock", "exists": True,
                                "added": ["default / frame"],
                                "changed": ["default / sign", "default / relight"],
                                "removed": [], "renamed": None}
    project.write(Path(project.recipe).read_text(encoding="utf-8").replace(
        "  - {id: frame, prompt: Add a frame}\n", "").replace(
        "  - id: relight\n    prompt: Relight the scene as {{ light }}\n", "").replace(
        "poster: relight", "poster: sign"))
    assert plan_json(project)["lock"]["removed"] == ["default / relight"]


def test_the_preview_provider_uses_no_lock(project: Project) -> None:
    project.run()
    text = plan(project, "--provider", "preview").stdout
    assert "lock" not in text
    document = plan_json(project, "--provider", "preview")
    assert document["lock"] is None
    assert {t["lock"] is None for t in document["tasks"]} == {True}


def test_a_lock_that_cannot_be_read_stops_the_plan(project: Project) -> None:
    project.run()
    project.lock.write_text("version: 2\n", encoding="utf-8")
    result = project.run_cli("plan", "recipe.yaml", "--cache-dir", str(project.cache))
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr.startswith("kontext-pipeline: recipe.lock:1:")
    assert result.stderr.endswith("`kontext-pipeline run --frozen --relock recipe.yaml`\n")
