"""``plan`` and ``run`` say why each step that is not cached runs: what changed in its request
since the last run recorded in ``--out``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from kontext_pipeline.outputs._manifest import last_run, read_manifest
from kontext_pipeline.plan._explain import Change, request_changes, word_diff
from kontext_pipeline.plan._plan import build_plan
from kontext_pipeline.recipe._spec import load_spec
from kontext_pipeline.store._lock import LockedStep
from tests.conftest import RunCli, WriteRecipe

RECIPE = """
    version: 1
    name: explained
    inputs: {photo: photo.png}
    steps:
      - id: recolor
        image: photo
        prompt: Change the car's color to red, keep everything else unchanged
      - id: sign
        prompt: Replace 'OPEN' with 'CLOSED' on the sign
      - id: relight
        prompt: Relight the scene as golden hour
        aspect_ratio: "16:9"
"""


@pytest.mark.parametrize(("old", "new", "shown"), [
    ("Change the car's color to red, keep everything else unchanged",
     "Change the car's color to blue, keep everything else unchanged",
     "… car's color to [-red,-]{+blue,+} keep everything else …"),
    ("Make it red", "Make it bright red", "Make it {+bright+} red"),
    ("Make it bright red", "Make it red", "Make it [-bright-] red"),
    ("one two three four five six seven eight nine ten eleven twelve thirteen",
     "one two three FOUR five six seven eight nine ten eleven twelve THIRTEEN",
     "one two three [-four-]{+FOUR+} five six seven … ten eleven twelve "
     "[-thirteen-]{+THIRTEEN+}"),
    ("Relight the scene\nat dusk", "Relight the scene at dusk",
     "only its spacing or line breaks changed"),
])
def test_word_diff_shows_the_words_that_changed(old: str, new: str, shown: str) -> None:
    assert word_diff(old, new) == shown


def plan(run_cli: RunCli, recipe: Path, *args: str) -> dict[str, str | None]:
    result = run_cli("plan", str(recipe), "--provider", "preview", "--cache-dir",
                     str(recipe.parent / "cache"), "--out", str(recipe.parent / "out"), "--json",
                     *args)
    assert result.exit_code == 0, result.output
    return {t["step"]: t["why"] for t in json.loads(result.stdout)["tasks"]}


def run(run_cli: RunCli, recipe: Path, *args: str) -> str:
    result = run_cli("run", str(recipe), "--provider", "preview", "--cache-dir",
                     str(recipe.parent / "cache"), "--out", str(recipe.parent / "out"), *args)
    assert result.exit_code == 0, result.output
    return result.stderr


def test_one_changed_word_of_one_prompt_is_named(run_cli: RunCli,
                                                 write_recipe: WriteRecipe) -> None:
    recipe = write_recipe(RECIPE)
    first = run(run_cli, recipe)
    assert "runs:" not in first  # nothing to compare with yet
    recipe.write_text(recipe.read_text().replace("color to red", "color to blue"))
    assert plan(run_cli, recipe) == {
        "recolor": "prompt: … car's color to [-red,-]{+blue,+} keep everything else …",
        "sign": "its input 'recolor' runs again",
        "relight": "its input 'sign' runs again"}
    text = run_cli("plan", str(recipe), "--provider", "preview", "--cache-dir",
                   str(recipe.parent / "cache"), "--out", str(recipe.parent / "out")).stdout
    assert "       why: prompt: … car's color to [-red,-]{+blue,+} keep everything else …\n" in text
    second = run(run_cli, recipe)
    assert second.splitlines()[1:4] == [
        "explained/default/recolor: runs: prompt: … car's color to [-red,-]{+blue,+} keep "
        "everything else …",
        "explained/default/sign: runs: its input 'recolor' runs again",
        "explained/default/relight: runs: its input 'sign' runs again"]
    assert plan(run_cli, recipe) == {"recolor": None, "sign": None, "relight": None}


def test_seeds_parameters_models_and_input_images_are_named(
        run_cli: RunCli, write_recipe: WriteRecipe) -> None:
    recipe = write_recipe(RECIPE)
    run(run_cli, recipe)
    text = recipe.read_text()
    recipe.write_text(text.replace('aspect_ratio: "16:9"', 'aspect_ratio: "4:3"\n'
                                   '    seed: 9\n    model: flux-kontext-max'))
    assert plan(run_cli, recipe)["relight"] == (
        'model: flux-kontext-pro -> flux-kontext-max; seed: 190133108 -> 9; aspect_ratio: '
        '"16:9" -> "4:3"')
    recipe.write_text(text)
    Image.new("RGB", (32, 24), (200, 40, 40)).save(recipe.parent / "photo.png")
    why = plan(run_cli, recipe)
    assert why["recolor"] is not None
    assert why["recolor"].startswith("input image 'photo' changed (")
    assert why["sign"] == "its input 'recolor' runs again"


def test_other_reasons(run_cli: RunCli, write_recipe: WriteRecipe) -> None:
    recipe = write_recipe(RECIPE)
    run(run_cli, recipe)
    other_cache = plan(run_cli, recipe, "--cache-dir", str(recipe.parent / "elsewhere"))
    assert other_cache["recolor"] == ("the same request as last time, but its result is not in "
                                      "this cache (another --cache-dir, or the entry was "
                                      "removed)")
    assert other_cache["sign"] == "its input 'recolor' runs again"
    recipe.write_text(recipe.read_text() + "  - {id: frame, prompt: Add a frame}\n")
    assert plan(run_cli, recipe)["frame"] == ("a new step: the last run had no such step in "
                                              "this variant")
    result = run_cli("plan", str(recipe), "--provider", "bfl", "--cache-dir",
                     str(recipe.parent / "cache"), "--out", str(recipe.parent / "out"), "--json")
    assert {t["why"] for t in json.loads(result.stdout)["tasks"]} == {
        "the provider changed: preview -> bfl"}


def test_the_last_run_is_read_with_the_manifest_model(run_cli: RunCli,
                                                      write_recipe: WriteRecipe) -> None:
    recipe = write_recipe(RECIPE)
    run(run_cli, recipe)
    manifest = recipe.parent / "out" / "manifest.json"
    last = last_run(recipe.parent / "out")
    assert last is not None
    assert (last.manifest, last.provider) == (manifest, "preview")
    assert last.steps[("default", "sign")] == read_manifest(manifest).steps[1]
    recipe.write_text(recipe.read_text().replace("golden hour", "blue hour"))
    assert plan(run_cli, recipe)["relight"] == "prompt: … the scene as [-golden-]{+blue+} hour"


@pytest.mark.invalid_manifests
def test_an_older_manifest_explains_one_not_ours_explains_nothing(
        run_cli: RunCli, write_recipe: WriteRecipe) -> None:
    recipe = write_recipe(RECIPE)
    run(run_cli, recipe)
    manifest = recipe.parent / "out" / "manifest.json"
    document = json.loads(manifest.read_text())
    for step in document["steps"]:  # as a version before step images wrote it
        del step["image"], step["images"], step["output_file_sha256"]
    manifest.write_text(json.dumps(document))
    recipe.write_text(recipe.read_text().replace("golden hour", "blue hour"))
    assert plan(run_cli, recipe)["relight"] == "prompt: … the scene as [-golden-]{+blue+} hour"
    document["steps"][2]["seed"] = "190133108"  # a manifest edited by hand: not one we wrote
    manifest.write_text(json.dumps(document))
    assert last_run(recipe.parent / "out") is None
    assert plan(run_cli, recipe) == {"recolor": None, "sign": None, "relight": None}
    manifest.write_text("{")
    assert plan(run_cli, recipe) == {"recolor": None, "sign": None, "relight": None}


def test_a_manifest_record_and_a_lock_record_are_compared_alike(
        run_cli: RunCli, write_recipe: WriteRecipe) -> None:
    recipe = write_recipe(RECIPE)
    run(run_cli, recipe)
    recorded = read_manifest(recipe.parent / "out" / "manifest.json").steps[2]
    assert recorded.output_sha256 is not None
    locked = LockedStep(
        variant=recorded.variant, step=recorded.step, key="0" * 64, model=recorded.model,
        seed=recorded.seed, prompt=recorded.prompt, params=recorded.params,
        inputs_sha256=recorded.inputs_sha256, output_sha256=recorded.output_sha256, credits=4,
        request_id=None)
    recipe.write_text(recipe.read_text().replace("golden hour", "blue hour")
                      .replace('aspect_ratio: "16:9"', 'aspect_ratio: "16:9"\n    seed: 9'))
    task = build_plan(load_spec(recipe), provider="preview").tasks[2]
    sign = recorded.inputs_sha256[0]
    expected = [Change("prompt", "Relight the scene as golden hour",
                       "Relight the scene as blue hour"), Change("seed", 190133108, 9)]
    assert request_changes(task, recorded, {"sign": sign}) == expected
    assert request_changes(task, locked, {"sign": sign}) == expected
    assert [change.detail for change in expected] == ["… the scene as [-golden-]{+blue+} hour",
                                                      "190133108 -> 9"]
    assert request_changes(task, locked, {"sign": None})[2:] == [
        Change("input step", sign, None, "sign")]
