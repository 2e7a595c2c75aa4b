"""``kontext-pipeline init``: a commented recipe, its schema and an example image, ready to
validate and to run offline; existing files are never overwritten without --force."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from kontext_pipeline.errors import UsageError
from kontext_pipeline.recipe._scaffold import (
    IMAGE_FILE,
    RECIPE_FILE,
    SCHEMA_FILE,
    example_image,
    recipe_name,
    recipe_text,
    write_scaffold,
)
from kontext_pipeline.recipe._schema import load_schema, schema_text
from tests.conftest import RunCli
from tests.test_cli import imported_after

FILES = (RECIPE_FILE, SCHEMA_FILE, IMAGE_FILE)


def test_init_validate_and_preview_run_in_an_empty_folder(
        run_cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "spring-poster"
    folder.mkdir()
    monkeypatch.chdir(folder)
    created = run_cli("init")
    assert created.exit_code == 0, created.output
    assert created.stdout == (
        "created recipe.yaml\n"
        "created pipeline.schema.json\n"
        "created images/example.png\n"
        "next:\n"
        "  kontext-pipeline validate recipe.yaml\n"
        "  kontext-pipeline run recipe.yaml --provider preview\n"
    )
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == \
        sorted(FILES)

    validated = run_cli("validate", "recipe.yaml")
    assert (validated.exit_code, validated.stdout, validated.stderr) == \
        (0, "recipe.yaml: ok (2 steps, 1 variant, 2 tasks)\n", "")

    ran = run_cli("run", "recipe.yaml", "--provider", "preview", "--cache-dir",
                  str(tmp_path / "cache"))
    assert ran.exit_code == 0, ran.output
    out = folder / "out" / "spring-poster"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["pipeline"] == "spring-poster"
    assert [(s["step"], s["status"], s["output"]) for s in manifest["steps"]] == \
        [("door", "done", "door.png"), ("evening", "done", "evening.png")]
    with Image.open(out / "evening.png") as picture:
        assert picture.format == "PNG"


def test_init_refuses_to_overwrite_unless_forced(run_cli: RunCli, tmp_path: Path) -> None:
    target = tmp_path / "recipes"
    target.mkdir()
    (target / RECIPE_FILE).write_text("mine\n")
    refused = run_cli("init", str(target))
    assert refused.exit_code == 2
    assert refused.stdout == ""
    assert refused.stderr == (f"kontext-pipeline: init: recipe.yaml already exists in {target}; "
                              "nothing was written (--force replaces them)\n")
    assert (target / RECIPE_FILE).read_text() == "mine\n"
    assert sorted(p.name for p in target.iterdir()) == [RECIPE_FILE]

    forced = run_cli("init", "--force", str(target))
    assert forced.exit_code == 0
    assert forced.stdout.splitlines()[:3] == [
        f"replaced {target / RECIPE_FILE}",
        f"created {target / SCHEMA_FILE}",
        f"created {target / IMAGE_FILE}",
    ]
    assert (target / RECIPE_FILE).read_text() == recipe_text("recipes")

    again = run_cli("init", str(target))
    assert again.exit_code == 2
    assert again.stderr == (f"kontext-pipeline: init: recipe.yaml, pipeline.schema.json and "
                            f"images/example.png already exist in {target}; nothing was written "
                            "(--force replaces them)\n")


def test_init_in_the_current_folder_names_it_in_the_refusal(
        run_cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / IMAGE_FILE).write_bytes(b"not mine to replace")
    refused = run_cli("init")
    assert refused.exit_code == 2
    assert refused.stderr == ("kontext-pipeline: init: images/example.png already exists in the "
                              "current folder; nothing was written (--force replaces them)\n")
    assert (tmp_path / IMAGE_FILE).read_bytes() == b"not mine to replace"
    assert not (tmp_path / RECIPE_FILE).exists()


def test_init_makes_missing_folders_and_refuses_a_file(run_cli: RunCli, tmp_path: Path) -> None:
    nested = tmp_path / "a" / "b"
    assert run_cli("init", str(nested)).exit_code == 0
    assert all((nested / name).is_file() for name in FILES)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UsageError, match=r"^init: .*file is not a folder; name a folder for "
                                         r"the recipe$"):
        write_scaffold(blocker)


def test_the_schema_beside_the_recipe_is_the_packaged_one(tmp_path: Path) -> None:
    write_scaffold(tmp_path)
    assert (tmp_path / SCHEMA_FILE).read_text(encoding="utf-8") == schema_text()
    first_line = (tmp_path / RECIPE_FILE).read_text().splitlines()[0]
    assert first_line == f"# yaml-language-server: $schema={SCHEMA_FILE}"


def test_the_example_image_is_a_small_real_picture_with_the_same_bytes_every_time() -> None:
    data = example_image()
    assert data == example_image()
    assert len(data) < 10_000
    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.size, image.mode) == ("PNG", (320, 240), "RGB")
        assert image.getpixel((5, 5)) == (150, 200, 235)  # sky
        assert image.getpixel((140, 150)) == (240, 240, 240)  # the white door the recipe paints
        assert len(image.getcolors(maxcolors=4096) or []) >= 8


def test_every_field_of_the_recipe_has_a_comment_on_its_line() -> None:
    text = recipe_text("my-recipe")
    lines = text.splitlines()
    document = yaml.compose(text)
    assert document is not None
    keys = _key_nodes(document)
    assert len(keys) == 22
    uncommented = [lines[k.start_mark.line] for k in keys
                   if " # " not in lines[k.start_mark.line]]
    assert uncommented == []


def test_the_recipe_mentions_every_field_the_schema_has() -> None:
    text = recipe_text("my-recipe")
    schema = load_schema()
    fields = [*schema["properties"], *schema["$defs"]["step"]["properties"],
              *schema["properties"]["defaults"]["properties"], "include", "exclude"]
    missing = [f for f in fields if f"{f}:" not in text and f"`{f}`" not in text]
    assert missing == []


@pytest.mark.parametrize(("folder", "name"), [
    ("spring-poster", "spring-poster"),
    ("My Recipes!", "my-recipes"),
    ("_drafts", "drafts"),
    ("v2.1_final.", "v2.1_final"),
    ("???", "my-recipe"),
    ("CON", "my-recipe"),
    ("lpt1.yaml", "my-recipe"),
    ("x" * 80, "x" * 64),
])
def test_recipe_name_is_a_slug_of_the_folder(tmp_path: Path, folder: str, name: str) -> None:
    assert recipe_name(tmp_path / folder) == name


def _key_nodes(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for key, value in node.value for n in (key, *_key_nodes(value))]
    if isinstance(node, yaml.SequenceNode):
        return [n for item in node.value for n in _key_nodes(item)]
    return []


def test_init_help_imports_nothing_heavy() -> None:
    assert imported_after("init", "--help") == []
