"""``kontext-pipeline inspect``: the provenance of an exported image, as text or JSON, and a
clear message (exit 2) for anything else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from kontext_pipeline.outputs._provenance import insert_provenance
from tests.conftest import RunCli, WriteRecipe
from tests.test_provenance import Run, jpeg, laughs, xmp_segment

RECIPE = """
    version: 1
    name: inspected
    seed: 9
    inputs: {photo: photo.png}
    steps:
      - id: paint
        image: photo
        prompt: |
          Paint the car “teal” & 'glossy'
          keep <everything> else
        output_format: jpeg
      - id: frame
        prompt: Frame it — 額縁
    outputs:
      car: paint
      framed: frame
"""


@pytest.fixture
def run(run_cli: RunCli, write_recipe: WriteRecipe, tmp_path: Path) -> Run:
    made = Run(run_cli, write_recipe(RECIPE), tmp_path / "cache", tmp_path / "out")
    made()
    return made


def test_inspect_prints_the_provenance(run: Run, run_cli: RunCli) -> None:
    record = run.step("paint")
    result = run_cli("inspect", str(run.out / "car.jpg"))
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == (
        "format:        jpeg\n"
        "recipe:        inspected\n"
        "variant:       default\n"
        "step:          paint\n"
        "model:         flux-kontext-pro\n"
        f"seed:          {record['seed']}\n"
        "provider:      preview\n"
        f"cache key:     {run.key('paint')}\n"
        f"output sha256: {record['output_sha256']}\n"
        "prompt:        Paint the car “teal” & 'glossy'\n"
        "               keep <everything> else\n")


def test_inspect_json(run: Run, run_cli: RunCli) -> None:
    image = str(run.out / "framed.png")
    record = run.step("frame")
    result = run_cli("inspect", image, "--json")
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == json.dumps({
        "file": image, "format": "png", "recipe": "inspected", "variant": "default",
        "step": "frame", "model": "flux-kontext-pro", "seed": record["seed"],
        "provider": "preview", "cache_key": run.key("frame"), "prompt": "Frame it — 額縁",
        "output_sha256": record["output_sha256"]}, indent=2, ensure_ascii=False) + "\n"
    assert "額縁" in result.stdout  # not \u escapes


def test_inspect_a_file_that_is_not_an_image(run_cli: RunCli, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    result = run_cli("inspect", str(notes))
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == f"kontext-pipeline: {notes} is not a PNG or JPEG image\n"


def test_inspect_an_image_without_provenance(run_cli: RunCli, write_recipe: WriteRecipe,
                                             tmp_path: Path) -> None:
    write_recipe(RECIPE)  # writes photo.png, an ordinary PNG
    photo = tmp_path / "photo.png"
    result = run_cli("inspect", str(photo))
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == (
        f"kontext-pipeline: {photo} has no kontext-pipeline provenance: it was not exported by "
        "kontext-pipeline, or was saved again without its metadata\n")


def test_inspect_a_missing_file_and_a_directory(run_cli: RunCli, tmp_path: Path) -> None:
    missing = tmp_path / "missing.png"
    result = run_cli("inspect", str(missing))
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == f"kontext-pipeline: cannot read {missing}: No such file or directory\n"
    result = run_cli("inspect", str(tmp_path))
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == f"kontext-pipeline: {tmp_path} is not a regular file\n"


def test_inspect_incomplete_provenance(run_cli: RunCli, tmp_path: Path) -> None:
    info = PngImagePlugin.PngInfo()
    for keyword in ("recipe", "variant", "step", "model", "seed", "provider", "cacheKey"):
        info.add_itxt(f"kontext:{keyword}", "7")
    image = tmp_path / "partial.png"
    Image.new("RGB", (2, 2)).save(image, pnginfo=info)
    result = run_cli("inspect", str(image))
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == (f"kontext-pipeline: {image} has incomplete provenance: no "
                             "kontext:prompt\n")


def test_inspect_a_truncated_export(run: Run, run_cli: RunCli, tmp_path: Path) -> None:
    cut = tmp_path / "cut.jpg"
    cut.write_bytes((run.out / "car.jpg").read_bytes()[:40])
    result = run_cli("inspect", str(cut))
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == (f"kontext-pipeline: {cut} is truncated or damaged (a JPEG segment "
                             "runs past the end)\n")


def test_inspect_refuses_xmp_with_a_doctype(run_cli: RunCli, tmp_path: Path) -> None:
    image = tmp_path / "laughs.jpg"
    image.write_bytes(insert_provenance(jpeg(), xmp_segment(laughs("utf-16"))))
    result = run_cli("inspect", str(image))
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == (f"kontext-pipeline: {image} is damaged (its XMP packet has a "
                             "DOCTYPE, which XMP never has)\n")


def test_inspect_help(run_cli: RunCli) -> None:
    result = run_cli("inspect", "--help")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[:2] == ["Usage: cli inspect [OPTIONS] IMAGE", ""]
    assert "--json      Print the provenance as JSON." in result.stdout
