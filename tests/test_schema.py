"""The JSON Schema: valid, shipped, printed, the single source of the format."""

from __future__ import annotations

import dataclasses
import json

import pytest
from jsonschema import Draft202012Validator

from kontext_pipeline.recipe._models import MODELS, REQUEST_FIELDS
from kontext_pipeline.recipe._schema import load_schema, schema_text
from kontext_pipeline.recipe._spec import Params
from tests.conftest import PIPELINES, ROOT, RunCli


def test_schema_is_valid_draft_2020_12() -> None:
    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_top_level_schema_file_is_the_packaged_one() -> None:
    assert (ROOT / "schemas" / "pipeline.schema.json").read_text(encoding="utf-8") == (
        schema_text())


def test_schema_command_prints_it(run_cli: RunCli) -> None:
    result = run_cli("schema")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == load_schema()


def test_step_fields_match_the_request_parameters() -> None:
    step = load_schema()["$defs"]["step"]["properties"]
    params = {f.name for f in dataclasses.fields(Params)}
    assert params == {"model", *REQUEST_FIELDS}
    assert set(step) == {"id", "prompt", "image", "seed", "model", *REQUEST_FIELDS}
    assert set(load_schema()["properties"]["defaults"]["properties"]) == set(REQUEST_FIELDS)


def test_the_schemas_models_are_the_models_table() -> None:
    schema = load_schema()
    assert schema["$defs"]["model_name"]["enum"] == list(MODELS)
    image = schema["$defs"]["step"]["properties"]["image"]["anyOf"][1]
    assert image["maxItems"] == max(m.references for m in MODELS.values())
    assert schema["$defs"]["safety_tolerance"]["maximum"] == max(m.safety
                                                                 for m in MODELS.values())


def test_the_schema_takes_a_model_or_a_template_naming_one_matrix_key() -> None:
    validator = Draft202012Validator(load_schema())
    recipe = {"version": 1, "name": "r", "steps": [{"id": "a", "prompt": "p"}]}
    for model in [*MODELS, "{{ model }}", "{{model}}", "{{ the_model_2 }}"]:
        assert validator.is_valid({**recipe, "model": model}), model
    refused: list[object] = ["flux-dev", "{{ model | upper }}", "{{ a }}{{ b }}", "{{ 1 }}", 3]
    for value in refused:
        assert not validator.is_valid({**recipe, "model": value}), value


def test_every_field_is_described_for_editors() -> None:
    schema = load_schema()
    for name, prop in schema["properties"].items():
        assert "description" in prop, name


@pytest.mark.parametrize("recipe", sorted(p.name for p in PIPELINES.glob("*.yaml")))
def test_every_bundled_recipe_is_valid(recipe: str, run_cli: RunCli) -> None:
    result = run_cli("validate", "--strict", str(PIPELINES / recipe))
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith(f"{PIPELINES / recipe}: ok (")


def test_there_are_bundled_recipes_of_each_kind() -> None:
    texts = {p.stem: p.read_text(encoding="utf-8") for p in PIPELINES.glob("*.yaml")}
    assert {"poster-chain", "color-matrix", "multi-reference", "text-to-image"} <= set(texts)
    assert "matrix:" in texts["color-matrix"]
    assert "image: [" in texts["multi-reference"]


def test_the_schema_itself_refuses_seed_zero_for_editors() -> None:
    validator = Draft202012Validator(load_schema())
    step = {"id": "edit", "prompt": "Make it blue"}
    recipe = {"version": 1, "name": "r", "steps": [step]}
    assert validator.is_valid({**recipe, "seed": 1})
    assert not validator.is_valid({**recipe, "seed": 0})
    assert validator.is_valid({**recipe, "steps": [{**step, "seed": 4294967295}]})
    assert not validator.is_valid({**recipe, "steps": [{**step, "seed": 0}]})
    assert "never 0" in load_schema()["$defs"]["seed"]["description"].lower()
