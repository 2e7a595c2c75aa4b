"""Reading a manifest back: what a run writes (``images`` included), and every way a document
can fail to be a manifest, named by its first wrong field."""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from kontext_pipeline.outputs._manifests import SourceImage, Totals, parse_manifest
from tests.conftest import RunCli, WriteRecipe

RECIPE = """
    version: 1
    name: refs
    inputs: {photo: photo.png}
    steps:
      - {id: alone, prompt: A cat}
      - {id: paint, image: photo, prompt: Paint it red}
      - {id: mix, image: [paint, photo], prompt: Put the two side by side}
    """


def test_a_run_records_the_images_each_step_read(run_cli: RunCli, write_recipe: WriteRecipe,
                                                  tmp_path: Path) -> None:
    recipe = write_recipe(RECIPE)
    out = tmp_path / "deep" / "out"
    result = run_cli("run", str(recipe), "--provider", "preview", "--cache-dir",
                     str(tmp_path / "cache"), "--out", str(out))
    assert result.exit_code == 0, result.output
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


GOOD: dict[str, Any] = {
    "pipeline": "p", "spec_sha256": "0" * 64, "provider": "preview",
    "totals": {"steps": 1, "cache_hits": 0, "calls": 1, "credits": 4, "failed": 0},
    "steps": [{"variant": "default", "step": "one", "model": "flux-kontext-pro",
               "prompt": "Paint it", "seed": 1, "params": {}, "inputs_sha256": ["a" * 64],
               "output_sha256": "b" * 64, "output": "one.png", "cache": "miss",
               "request_id": "r", "credits": 4, "duration_s": 1, "status": "done",
               "error": None, "later_field": [1, 2],
               "images": [{"name": "photo", "source": "input", "path": "photo.png"}]}],
}


def test_a_good_document_reads_and_extra_fields_are_ignored() -> None:
    step = parse_manifest(GOOD).steps[0]
    assert step.duration_s == 1.0
    assert step.images == (SourceImage("photo", "input", "photo.png"),)
    assert step.output_file_sha256 is None  # GOOD is as older versions wrote it: no such field
    digest = "c" * 64
    assert parse_manifest(changed("steps.0.output_file_sha256", digest)).steps[0] == replace(
        step, output_file_sha256=digest)


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
    for run in ("first", "cached, nothing written again"):
        result = run_cli("run", str(recipe), "--provider", "preview", "--cache-dir",
                         str(tmp_path / "cache"), "--out", str(out))
        assert result.exit_code == 0, (run, result.output)
        document = json.loads((out / "manifest.json").read_text())
        paint, frame, crop = document["steps"]
        for step in (paint, frame):
            on_disk = hashlib.sha256((out / step["output"]).read_bytes()).hexdigest()
            assert step["output_file_sha256"] == on_disk, run
            assert step["output_file_sha256"] != step["output_sha256"]  # provenance inserted
        assert (crop["output"], crop["output_file_sha256"]) == (None, None)
        assert parse_manifest(document).steps[1].output_file_sha256 == frame["output_file_sha256"]


def changed(path: str, value: Any) -> dict[str, Any]:
    document = copy.deepcopy(GOOD)
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
    ([GOOD], "the document: expected an object, got a list"),
    (changed("pipeline", KeyError), "pipeline is missing"),
    (changed("totals", []), "totals: expected an object, got a list"),
    (changed("totals.credits", "4"), "totals.credits: expected an integer, got a string"),
    (changed("totals.failed", True), "totals.failed: expected an integer, got a boolean"),
    (changed("steps", {}), "steps: expected a list, got an object"),
    (changed("steps.0", "x"), "steps[0]: expected an object, got a string"),
    (changed("steps.0.variant", KeyError), "steps[0].variant is missing"),
    (changed("steps.0.seed", 1.5), "steps[0].seed: expected an integer, got a number"),
    (changed("steps.0.duration_s", None), "steps[0].duration_s: expected a number, got null"),
    (changed("steps.0.inputs_sha256", ["../x"]),
     "steps[0].inputs_sha256[0]: not a sha256 digest"),
    (changed("steps.0.output_sha256", "B" * 64), "steps[0].output_sha256: not a sha256 digest"),
    (changed("steps.0.output_file_sha256", "x"),
     "steps[0].output_file_sha256: not a sha256 digest"),
    (changed("steps.0.output_file_sha256", 7),
     "steps[0].output_file_sha256: expected a string or null, got an integer"),
    (changed("steps.0.images", {}), "steps[0].images: expected a list, got an object"),
    (changed("steps.0.images.0.path", 3),
     "steps[0].images[0].path: expected a string or null, got an integer"),
    (changed("steps.0.images.0.name", KeyError), "steps[0].images[0].name is missing"),
])
def test_what_is_not_a_manifest(document: Any, message: str) -> None:
    with pytest.raises(ValueError) as raised:  # noqa: PT011  (the message is compared whole)
        parse_manifest(document)
    assert str(raised.value) == message
