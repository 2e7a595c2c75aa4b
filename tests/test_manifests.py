"""``manifest.json``: one typed model writes it and reads it back; its JSON Schema ships with the
package; every image a run made is in ``--out`` at full size (the intermediate steps' under
``steps/``); and every way a document can fail to be a manifest is named by its first wrong
field."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from PIL import Image

from kontext_pipeline import Cache, build_plan, load_recipe, open_provider, run_pipelines
from kontext_pipeline.outputs._manifest import (
    Manifest,
    SourceImage,
    StepResult,
    Totals,
    manifest_schema_text,
    parse_manifest,
    read_manifest,
)
from kontext_pipeline.outputs._provenance import read_provenance
from kontext_pipeline.recipe._models import MODELS, REQUEST_FIELDS
from kontext_pipeline.recipe._schema import load_schema
from kontext_pipeline.recipe._spec import Params
from tests.conftest import ROOT, RunCli, WriteRecipe, schema_errors

RECIPE = """
    version: 1
    name: refs
    inputs: {photo: photo.png}
    steps:
      - {id: alone, prompt: A cat}
      - {id: paint, image: photo, prompt: Paint it red}
      - {id: mix, image: [paint, photo], prompt: Put the two side by side}
    """


def run(run_cli: RunCli, recipe: Path, out: Path, *args: str) -> str:
    result = run_cli("run", str(recipe), "--provider", "preview", "--cache-dir",
                     str(recipe.parent / "cache"), "--out", str(out), *args)
    assert result.exit_code == 0, result.output
    return result.stderr


def test_a_run_records_the_images_each_step_read(run_cli: RunCli, write_recipe: WriteRecipe,
                                                  tmp_path: Path) -> None:
    recipe = write_recipe(RECIPE)
    out = tmp_path / "deep" / "out"
    run(run_cli, recipe, out)
    document = json.loads((out / "manifest.json").read_text())
    assert [step["images"] for step in document["steps"]] == [
        [],
        [{"name": "photo", "source": "input", "path": "../../photo.png"}],
        [{"name": "paint", "source": "step"},
         {"name": "photo", "source": "input", "path": "../../photo.png"}],
    ]
    manifest = parse_manifest(document)
    assert manifest.totals == Totals(steps=3, cache_hits=0, calls=3, credits=12, failed=0)
    assert manifest.variants == ["default"]
    assert manifest.steps[2].images == (SourceImage("paint", "step"),
                                        SourceImage("photo", "input", "../../photo.png"))
    assert manifest.steps[2].inputs_sha256 == (document["steps"][1]["output_sha256"],
                                               document["steps"][1]["inputs_sha256"][0])


# --- one model: what it writes, it reads back -------------------------------------------


def test_the_model_reads_back_what_it_wrote(write_recipe: WriteRecipe, tmp_path: Path) -> None:
    write_recipe(RECIPE)
    plan = build_plan(load_recipe(tmp_path / "recipe.yaml"), provider="preview")
    out = tmp_path / "out"
    (report,) = run_pipelines([plan], cache=Cache(tmp_path / "cache"), out_dirs=[out],
                              open_provider=lambda: open_provider("preview", environ={}))
    written = (out / "manifest.json").read_text(encoding="utf-8")
    assert isinstance(report.manifest, Manifest)
    assert report.manifest.to_json() == written
    assert read_manifest(out / "manifest.json") == report.manifest
    assert parse_manifest(json.loads(written)) == report.manifest
    # the file as the runner has always written it: indented by two, keys in the design's order
    assert written == json.dumps(json.loads(written), indent=2, ensure_ascii=False) + "\n"
    assert list(json.loads(written)) == ["pipeline", "spec_sha256", "provider", "totals", "steps"]
    assert list(json.loads(written)["steps"][0]) == [
        "variant", "step", "model", "prompt", "seed", "params", "inputs_sha256",
        "output_sha256", "output", "output_file_sha256", "image", "cache", "request_id",
        "credits", "duration_s", "status", "error", "images"]


def test_fractional_credits_are_kept_and_whole_ones_stay_integers() -> None:
    document = copy.deepcopy(WRITTEN)
    document["steps"][0]["credits"] = 2.5
    document["totals"]["credits"] = 2.5
    manifest = parse_manifest(document)
    assert (manifest.totals.credits, manifest.steps[0].credits) == (2.5, 2.5)
    assert parse_manifest(json.loads(manifest.to_json())) == manifest
    whole = parse_manifest(WRITTEN)
    assert type(whole.totals.credits) is int
    assert '"credits": 4,' in whole.to_json()
    assert json.loads(whole.to_json()) == WRITTEN


def test_non_ascii_text_is_written_as_it_is() -> None:
    manifest = parse_manifest(changed("steps.0.prompt", "Peins-le en rouge, « vite » ✓"))
    assert '"prompt": "Peins-le en rouge, « vite » ✓",' in manifest.to_json()
    assert parse_manifest(json.loads(manifest.to_json())) == manifest


@pytest.mark.invalid_manifests
def test_a_manifest_that_is_not_a_manifest_is_refused_with_what_to_do(
        run_cli: RunCli, write_recipe: WriteRecipe, tmp_path: Path) -> None:
    recipe = write_recipe(RECIPE)
    out = tmp_path / "out"
    run(run_cli, recipe, out)
    path = out / "manifest.json"
    document = json.loads(path.read_text())
    document["steps"][1]["cache"] = "maybe"
    path.write_text(json.dumps(document))
    result = run_cli("report", str(out), "--cache-dir", str(tmp_path / "cache"))
    assert result.exit_code == 2
    assert result.stderr == (f"kontext-pipeline: {path} is not a manifest kontext-pipeline "
                             'wrote (steps[1].cache: expected one of "hit", "miss", got '
                             '"maybe"); run the recipe again to rewrite it\n')
    assert schema_errors(path) == ["$.steps[1].cache: 'maybe' is not one of ['hit', 'miss']"]


# --- the schema ---------------------------------------------------------------------------


def test_schema_manifest_prints_the_shipped_schema(run_cli: RunCli) -> None:
    result = run_cli("schema", "--manifest")
    assert result.exit_code == 0
    assert result.stdout == manifest_schema_text()
    schema = json.loads(result.stdout)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    assert (ROOT / "schemas" / "manifest.schema.json").read_text(encoding="utf-8") == (
        manifest_schema_text())
    assert run_cli("schema").stdout != result.stdout  # the recipe's stays the default


def test_the_schema_lists_what_the_model_writes_and_the_recipe_allows() -> None:
    schema = json.loads(manifest_schema_text())
    step = schema["$defs"]["step"]
    assert list(step["properties"]) == list(WRITTEN["steps"][0]) == step["required"]
    assert list(schema["properties"]["totals"]["properties"]) == list(WRITTEN["totals"])
    assert set(step["properties"]["params"]["properties"]) == {
        f.name for f in dataclasses.fields(Params)} - {"model"} == set(REQUEST_FIELDS)
    recipe = load_schema()
    assert step["properties"]["model"]["enum"] == recipe["$defs"]["model_name"]["enum"] == list(
        MODELS)
    assert step["properties"]["step"]["pattern"] == recipe["$defs"]["identifier"]["pattern"]
    assert schema["properties"]["pipeline"]["pattern"] == recipe["properties"]["name"]["pattern"]
    statuses = step["properties"]["status"]["enum"]
    assert statuses == ["done", "failed", "skipped", "missing"]
    for status in statuses:
        assert parse_manifest(changed("steps.0.status", status)).steps[0].status == status


def test_the_schema_holds_each_models_params_and_references_as_the_models_table_says() -> None:
    schema = json.loads(manifest_schema_text())
    rules = schema["$defs"]["step"]["allOf"]
    for model in MODELS.values():
        params = [schema["$defs"][rule["then"]["properties"]["params"]["$ref"].rsplit("/")[-1]]
                  for rule in rules if "params" in rule["then"]["properties"]
                  and model.name in _named(rule)]
        assert len(params) == 1, model.name
        assert params[0]["required"] == params[0]["propertyNames"]["enum"]
        assert set(params[0]["required"]) == set(model.fields), model.name
        safety = params[0].get("properties", {}).get("safety_tolerance", {}).get("maximum", 6)
        assert safety == model.safety, model.name
        limits = [rule["then"]["properties"]["inputs_sha256"]["maxItems"] for rule in rules
                  if "inputs_sha256" in rule["then"]["properties"] and model.name in _named(rule)]
        assert min(limits, default=8) == model.references, model.name


def test_the_schemas_ranges_are_the_models_tables() -> None:
    params = json.loads(manifest_schema_text())["$defs"]["step"]["properties"]["params"]
    fields = params["properties"]
    for name in ("steps", "guidance"):
        ranges = {(r.minimum, r.maximum) for m in MODELS.values()
                  if (r := m.steps if name == "steps" else m.guidance) is not None}
        assert ranges == {(fields[name]["minimum"], fields[name]["maximum"])}, name
    sizes = {(s.minimum, s.multiple) for m in MODELS.values() if (s := m.sizes) is not None}
    for name in ("width", "height"):
        assert sizes == {(fields[name]["minimum"], fields[name]["multipleOf"])}, name
    assert fields["safety_tolerance"]["maximum"] == max(m.safety for m in MODELS.values())


def _named(rule: dict[str, Any]) -> list[str]:
    condition = rule["if"]["properties"]["model"]
    return list(condition.get("enum", [condition.get("const")]))


def test_a_flux2_step_is_checked_against_its_models_params() -> None:
    flex = changed("steps.0.model", "flux-2-flex")
    flex["steps"][0]["params"] = {"width": 1024, "height": None, "output_format": "webp",
                                  "safety_tolerance": 5, "prompt_upsampling": False,
                                  "steps": 50, "guidance": 5.0}
    flex["steps"][0]["inputs_sha256"] = ["a" * 64] * 8
    flex["steps"][0]["credits"] = 12.35
    assert validate(flex) == []
    klein = copy.deepcopy(flex)
    klein["steps"][0]["model"] = "flux-2-klein-4b"
    assert validate(klein) == [
        "$.steps[0].params: 'prompt_upsampling' is not one of "
        "['width', 'height', 'output_format', 'safety_tolerance']",
        "$.steps[0].params: 'steps' is not one of "
        "['width', 'height', 'output_format', 'safety_tolerance']",
        "$.steps[0].params: 'guidance' is not one of "
        "['width', 'height', 'output_format', 'safety_tolerance']",
        "$.steps[0].inputs_sha256: ['" + "', '".join(["a" * 64] * 8) + "'] is too long"]
    kontext = changed("steps.0.params.output_format", "webp")
    kontext["steps"][0]["params"]["width"] = 1024
    assert validate(kontext) == [
        "$.steps[0].params: 'width' is not one of "
        "['aspect_ratio', 'output_format', 'safety_tolerance', 'prompt_upsampling']"]


def validate(document: Any) -> list[str]:
    validator = Draft202012Validator(json.loads(manifest_schema_text()))
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(document)]


def test_readers_tolerate_what_the_schema_refuses_an_older_or_a_later_manifest() -> None:
    assert validate(WRITTEN) == []
    later = changed("steps.0.later_field", [1, 2])
    later["added_later"] = True
    assert validate(later) == [
        "$: Additional properties are not allowed ('added_later' was unexpected)",
        "$.steps[0]: Additional properties are not allowed ('later_field' was unexpected)"]
    assert parse_manifest(later) == parse_manifest(WRITTEN)
    older = copy.deepcopy(WRITTEN)
    for field in ("images", "output_file_sha256", "image", "request_id"):
        del older["steps"][0][field]
    assert parse_manifest(older).steps[0] == dataclasses.replace(
        parse_manifest(WRITTEN).steps[0], images=None, output_file_sha256=None, image=None,
        request_id=None)
    assert validate(older) == [f"$.steps[0]: '{field}' is a required property" for field in (
        "output_file_sha256", "image", "request_id", "images")]


@pytest.mark.parametrize(("path", "value", "message"), [
    ("steps.0.output_sha256", "B" * 64, "is not valid under any of the given schemas"),
    ("steps.0.inputs_sha256", ["B" * 64], "does not match '^[0-9a-f]{64}$'"),
    ("steps.0.image", "/etc/passwd", "is not valid under any of the given schemas"),
    ("steps.0.output", "../poster.png", "is not valid under any of the given schemas"),
    ("steps.0.images.0.source", "step", "should not be valid under {'required': ['path']}"),
    ("steps.0.seed", 0, "0 is less than the minimum of 1"),
    ("totals.credits", -1, "-1 is less than the minimum of 0"),
    ("provider", "openai", "'openai' is not one of ['bfl', 'preview']"),
])
def test_the_schema_is_precise(path: str, value: Any, message: str) -> None:
    (error,) = validate(changed(path, value))
    assert error.endswith(message), error


# --- every image a run made, at full size -------------------------------------------------

MATRIX = """
    version: 1
    name: grid
    inputs: {photo: photo.png}
    matrix:
      color: [red, teal]
    steps:
      - {id: paint, image: photo, prompt: "Paint it {{ color }}"}
      - {id: frame, prompt: Frame it, output_format: jpeg}
      - {id: sign, prompt: Add a sign}
    outputs: {poster: sign}
    """


def decoded(path: Path) -> Image.Image:
    with Image.open(io.BytesIO(path.read_bytes())) as image:
        image.load()
        loaded: Image.Image = image
    return loaded


def test_intermediate_steps_are_exported_under_steps(run_cli: RunCli, write_recipe: WriteRecipe,
                                                     tmp_path: Path) -> None:
    recipe = write_recipe(MATRIX)
    out = tmp_path / "out"
    run(run_cli, recipe, out)
    manifest = read_manifest(out / "manifest.json")
    assert [(s.variant, s.step, s.output, s.image) for s in manifest.steps] == [
        ("color=red", "paint", None, "steps/color=red/paint.png"),
        ("color=red", "frame", None, "steps/color=red/frame.jpg"),
        ("color=red", "sign", "color=red/poster.png", "color=red/poster.png"),
        ("color=teal", "paint", None, "steps/color=teal/paint.png"),
        ("color=teal", "frame", None, "steps/color=teal/frame.jpg"),
        ("color=teal", "sign", "color=teal/poster.png", "color=teal/poster.png"),
    ]
    for step in manifest.steps:
        assert step.image is not None
        data = (out / step.image).read_bytes()
        image = decoded(out / step.image)
        assert image.format == ("JPEG" if step.image.endswith(".jpg") else "PNG")
        assert image.size[0] > 0
        found = read_provenance(data)  # with its provenance, as any export
        assert found is not None
        assert (found.provenance.step, found.provenance.variant, found.output_sha256) == (
            step.step, step.variant, step.output_sha256)
        assert hashlib.sha256(data).hexdigest() != step.output_sha256
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        ".kontext-export.json", "color=red/poster.png", "color=teal/poster.png",
        "manifest.json", "report.html", "steps/color=red/frame.jpg",
        "steps/color=red/paint.png", "steps/color=teal/frame.jpg", "steps/color=teal/paint.png"]


def test_without_a_matrix_the_steps_folder_is_flat(run_cli: RunCli, write_recipe: WriteRecipe,
                                                   tmp_path: Path) -> None:
    recipe = write_recipe(RECIPE)
    out = tmp_path / "out"
    run(run_cli, recipe, out)
    manifest = read_manifest(out / "manifest.json")
    assert [(s.step, s.output, s.image) for s in manifest.steps] == [
        ("alone", None, "steps/alone.png"), ("paint", None, "steps/paint.png"),
        ("mix", "mix.png", "mix.png")]
    for name in ("alone", "paint"):
        assert decoded(out / "steps" / f"{name}.png").format == "PNG"
    cached = json.loads(json.dumps(manifest.as_dict()))
    stderr = run(run_cli, recipe, out)  # all cached: the same manifest, nothing written again
    assert "warning" not in stderr
    assert read_manifest(out / "manifest.json").as_dict() == {
        **cached, "totals": {**cached["totals"], "cache_hits": 3, "calls": 0, "credits": 0},
        "steps": [{**s, "cache": "hit", "credits": 0, "duration_s": 0.0}
                  for s in cached["steps"]]}


def test_step_images_no_longer_made_are_removed_like_any_export(
        run_cli: RunCli, write_recipe: WriteRecipe, tmp_path: Path) -> None:
    recipe = write_recipe(MATRIX)
    out = tmp_path / "out"
    run(run_cli, recipe, out)
    run(run_cli, recipe, out, "--var", "color=teal")
    assert sorted(p.name for p in (out / "steps").iterdir()) == ["color=teal"]
    assert not (out / "color=red").exists()
    (out / "steps" / "color=teal" / "frame.jpg").write_bytes(b"edited by hand")
    recipe.write_text(recipe.read_text().replace("outputs: {poster: sign}",
                                                 "outputs: {poster: sign, painted: paint}"))
    stderr = run(run_cli, recipe, out, "--var", "color=teal")
    assert sorted(p.name for p in (out / "steps" / "color=teal").iterdir()) == ["frame.jpg"]
    assert (out / "steps" / "color=teal" / "frame.jpg").read_bytes() != b"edited by hand"
    assert "warning" not in stderr  # a step image edited by hand is restored, as an output is
    steps = read_manifest(out / "manifest.json").steps
    assert [(s.step, s.image) for s in steps] == [
        ("paint", "color=teal/painted.png"), ("frame", "steps/color=teal/frame.jpg"),
        ("sign", "color=teal/poster.png")]
    recipe.write_text(recipe.read_text().replace("painted: paint}",
                                                 "painted: paint, framed: frame}"))
    run(run_cli, recipe, out, "--var", "color=teal")
    assert not (out / "steps").exists()  # its last folder gone, the folder goes too


# --- what is not a manifest -----------------------------------------------------------------

WRITTEN: dict[str, Any] = {
    "pipeline": "p", "spec_sha256": "0" * 64, "provider": "preview",
    "totals": {"steps": 1, "cache_hits": 0, "calls": 1, "credits": 4, "failed": 0},
    "steps": [{"variant": "default", "step": "one", "model": "flux-kontext-pro",
               "prompt": "Paint it", "seed": 1,
               "params": {"aspect_ratio": None, "output_format": "png", "safety_tolerance": 2,
                          "prompt_upsampling": False},
               "inputs_sha256": ["a" * 64], "output_sha256": "b" * 64, "output": "one.png",
               "output_file_sha256": "c" * 64, "image": "one.png", "cache": "miss",
               "request_id": "r", "credits": 4, "duration_s": 1.5, "status": "done",
               "error": None,
               "images": [{"name": "photo", "source": "input", "path": "photo.png"}]}],
}
"""A manifest as this version writes it."""


def test_a_good_document_reads() -> None:
    step = parse_manifest(WRITTEN).steps[0]
    assert step == StepResult(
        variant="default", step="one", model="flux-kontext-pro", prompt="Paint it", seed=1,
        params=WRITTEN["steps"][0]["params"], inputs_sha256=("a" * 64,),
        output_sha256="b" * 64, output="one.png", output_file_sha256="c" * 64, cache="miss",
        request_id="r", credits=4, duration_s=1.5, status="done", error=None,
        images=(SourceImage("photo", "input", "photo.png"),), image="one.png")
    assert parse_manifest(changed("steps.0.duration_s", 1)).steps[0].duration_s == 1.0


OUTPUTS = """
    version: 1
    name: files
    inputs: {photo: photo.png}
    steps:
      - {id: paint, image: photo, prompt: Paint it red}
      - {id: frame, prompt: Frame it, output_format: jpeg}
      - {id: crop, prompt: Crop it}
    outputs: {painted: paint, poster: frame}
    """


def test_the_manifest_describes_the_exported_files_as_they_are_on_disk(
        run_cli: RunCli, write_recipe: WriteRecipe, tmp_path: Path) -> None:
    recipe = write_recipe(OUTPUTS)
    out = tmp_path / "out"
    for attempt in ("first", "cached, nothing written again"):
        run(run_cli, recipe, out)
        document = json.loads((out / "manifest.json").read_text())
        paint, frame, crop = document["steps"]
        for step in (paint, frame):
            on_disk = hashlib.sha256((out / step["output"]).read_bytes()).hexdigest()
            assert step["output_file_sha256"] == on_disk, attempt
            assert step["output_file_sha256"] != step["output_sha256"]  # provenance inserted
            assert step["image"] == step["output"]
        assert (crop["output"], crop["output_file_sha256"], crop["image"]) == (
            None, None, "steps/crop.png")
        assert parse_manifest(document).steps[1].output_file_sha256 == frame["output_file_sha256"]


def changed(path: str, value: Any) -> dict[str, Any]:
    document = copy.deepcopy(WRITTEN)
    *parents, last = path.split(".")
    target: Any = document
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    if value is KeyError:
        del target[int(last) if last.isdigit() else last]
    else:
        target[int(last) if last.isdigit() else last] = value
    return document


@pytest.mark.parametrize(("document", "message"), [
    ([WRITTEN], "the document: expected an object, got a list"),
    (changed("pipeline", KeyError), "pipeline is missing"),
    (changed("totals", []), "totals: expected an object, got a list"),
    (changed("totals.credits", "4"), "totals.credits: expected a number, got a string"),
    (changed("totals.failed", True), "totals.failed: expected an integer, got a boolean"),
    (changed("totals.calls", 1.0), "totals.calls: expected an integer, got a number"),
    (changed("steps", {}), "steps: expected a list, got an object"),
    (changed("steps.0", "x"), "steps[0]: expected an object, got a string"),
    (changed("steps.0.variant", KeyError), "steps[0].variant is missing"),
    (changed("steps.0.seed", 1.5), "steps[0].seed: expected an integer, got a number"),
    (changed("steps.0.credits", None), "steps[0].credits: expected a number, got null"),
    (changed("steps.0.duration_s", None), "steps[0].duration_s: expected a number, got null"),
    (changed("steps.0.cache", "maybe"),
     'steps[0].cache: expected one of "hit", "miss", got "maybe"'),
    (changed("steps.0.status", "finished"),
     'steps[0].status: expected one of "done", "failed", "skipped", "missing", got "finished"'),
    (changed("steps.0.inputs_sha256", ["../x"]),
     "steps[0].inputs_sha256[0]: not a sha256 digest"),
    (changed("steps.0.output_sha256", "B" * 64), "steps[0].output_sha256: not a sha256 digest"),
    (changed("steps.0.output_file_sha256", "x"),
     "steps[0].output_file_sha256: not a sha256 digest"),
    (changed("steps.0.output_file_sha256", 7),
     "steps[0].output_file_sha256: expected a string or null, got an integer"),
    (changed("steps.0.image", ["one.png"]),
     "steps[0].image: expected a string or null, got a list"),
    (changed("steps.0.request_id", 12), "steps[0].request_id: expected a string or null, got "
                                        "an integer"),
    (changed("steps.0.images", {}), "steps[0].images: expected a list, got an object"),
    (changed("steps.0.images.0.path", 3),
     "steps[0].images[0].path: expected a string or null, got an integer"),
    (changed("steps.0.images.0.name", KeyError), "steps[0].images[0].name is missing"),
    (changed("steps.0.images.0.source", "url"),
     'steps[0].images[0].source: expected one of "input", "step", got "url"'),
])
def test_what_is_not_a_manifest(document: Any, message: str) -> None:
    with pytest.raises(ValueError) as raised:  # noqa: PT011  (the message is compared whole)
        parse_manifest(document)
    assert str(raised.value) == message
