"""``plan`` against the lock: per step, whether the lock agrees; which results the lock and the
exported files hold (no cost); which step must run again because a step after it needs its
image; and the changes a run would make to the lock."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from PIL import Image

from kontext_pipeline.store._lock import read_lock
from tests.conftest import RunCli, Start
from tests.test_check import RECIPE, Project


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
    # the record stays, without the file that is gone
    assert text.endswith("\n3 of 3 cached (2 from exported files, 1 held by the lock); the rest "
                         "cost 0 credits ($0.00)\nlock recipe.lock: a run adds 0, changes 1, "
                         "removes 0 step records\n  ~ default / recolor\n")
    assert not any(p.is_file() for p in project.cache.rglob("*"))  # plan refills nothing
    before = read_lock(project.lock)
    project.run()
    after = read_lock(project.lock)
    assert before is not None
    assert after is not None
    assert [where for where in before.steps if before.steps[where] != after.steps[where]] == [
        ("default", "recolor")]
    assert after.steps[("default", "recolor")].files == ()
    assert plan(project).stdout.endswith("\nlock recipe.lock: a run leaves it as it is\n")


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
                         "($0.08)\nlock recipe.lock: a run adds 0, changes 2, removes 0 step "
                         "records\n  ~ default / sign\n  ~ default / relight\n")


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
    assert result.stderr == ("kontext-pipeline: recipe.lock:1:10: version: this lock was "
                             "written by a newer kontext-pipeline (version 2); upgrade "
                             "kontext-pipeline\n")
    project.lock.write_text("version: 1\nrecipe: [\n", encoding="utf-8")
    result = project.run_cli("plan", "recipe.yaml", "--cache-dir", str(project.cache))
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr.startswith("kontext-pipeline: recipe.lock:3:1: not readable as YAML")
    assert result.stderr.endswith("; fix it, or rewrite it from the cache alone with "
                                  "`kontext-pipeline run --frozen --relock recipe.yaml`\n")


def test_a_file_is_judged_as_a_run_judges_it(project: Project) -> None:
    project.run()
    shutil.rmtree(project.cache)
    poster = project.root / "out" / "poster.png"
    before = hashlib.sha256(poster.read_bytes()).hexdigest()
    with Image.open(poster) as image:  # another image, without provenance
        other = image.convert("RGB")
    other.putpixel((0, 0), (1, 2, 3))
    other.save(poster, "PNG")
    after = hashlib.sha256(poster.read_bytes()).hexdigest()
    # the lock agrees with the file: only its image, not its hash, says it is not the output
    project.lock.write_text(project.lock.read_text(encoding="utf-8").replace(before, after),
                            encoding="utf-8")
    assert project.check("recipe.yaml").exit_code == 0
    project.cache.unlink()  # what check left in the cache's place
    text = plan(project).stdout
    assert [line.split("  key ")[0] for line in details(text)] == [
        "from its exported file", "lock: agrees", "from its exported file", "lock: agrees",
        "miss", "why: its exported file out/poster.png is not the image the lock records; "
                "the step runs again", "lock: agrees"]


MATRIX = (RECIPE.replace("    vars: {light: golden hour}\n",
                         "    vars: {light: golden hour}\n    matrix:\n      color: [red, blue]\n")
          .replace("color to red", "color to {{ color }}"))


def test_a_var_run_changes_the_lock_as_plan_says(project: Project) -> None:
    project.write(MATRIX)
    project.run()
    before = read_lock(project.lock)
    assert before is not None
    # blue is gone from the recipe, sign is gone from every variant, relight changes
    project.write(MATRIX.replace("[red, blue]", "[red, teal]").replace(
        "      - id: sign\n        prompt: Replace 'OPEN' with 'CLOSED' on the sign\n"
        "        seed: 7\n", ""))
    diff = plan_json(project, "--var", "color=red")["lock"]
    assert (diff["added"], diff["changed"], diff["removed"]) == (
        [], ["color=red / relight"], ["color=red / sign"])
    project.run("--var", "color=red")
    after = read_lock(project.lock)
    assert after is not None
    removed = {tuple(step.split(" / ")) for step in diff["removed"]}
    assert set(after.steps) == set(before.steps) - removed  # blue's kept: not selected
    assert [where for where in after.steps if after.steps[where] != before.steps[where]] == [
        ("color=red", "relight")]
    result = project.check("recipe.yaml", "--var", "color=red")
    assert (result.exit_code, result.stdout) == (
        0, "recipe.yaml: 2 steps and 2 files match the lock\n"), result.output
    blue = [file.path for (variant, _), record in after.steps.items()
            for file in record.files if variant == "color=blue"]
    assert len(blue) == 3
    assert all((project.root / path).is_file() for path in blue)  # their records kept, so are they
