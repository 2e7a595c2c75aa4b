"""load_spec: from a recipe file to a frozen Spec, with defaults filled in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kontext_pipeline import SpecError, load_recipe
from kontext_pipeline.recipe._keys import derive_seed
from kontext_pipeline.recipe._spec import DEFAULT_PARAMS, Params
from tests.conftest import PIPELINES, WriteRecipe


def test_poster_chain_is_read_with_every_default_explicit() -> None:
    spec = load_recipe(PIPELINES / "poster-chain.yaml")
    assert spec.name == "poster-chain"
    assert spec.file == str(PIPELINES / "poster-chain.yaml")
    assert [s.id for s in spec.steps] == ["recolor", "sign", "relight"]
    recolor, sign, relight = spec.steps
    assert recolor.image == ("street",)
    assert sign.image == ("recolor",)  # no `image`: the previous step's output
    assert relight.image == ("sign",)
    assert (recolor.seed, recolor.seed_explicit) == (derive_seed(1234, "recolor"), False)
    assert (sign.seed, sign.seed_explicit) == (7, True)
    assert relight.model == "flux-kontext-max"
    assert recolor.model == "flux-kontext-pro"
    assert relight.models == {"default": "flux-kontext-max"}
    assert relight.params_for("flux-kontext-max") == Params(
        model="flux-kontext-max", aspect_ratio="16:9", output_format="png", safety_tolerance=2,
        prompt_upsampling=False)
    assert spec.outputs == {"poster": "relight", "recolored": "recolor"}
    assert spec.inputs["street"].path == (PIPELINES / "images" / "street.jpg").resolve()
    assert spec.warnings == ()
    assert len(spec.variants) == 1


def test_minimal_recipe_defaults(write_recipe: WriteRecipe) -> None:
    spec = load_recipe(write_recipe("""
        version: 1
        name: tiny
        steps:
          - id: make
            prompt: A red apple
    """))
    assert spec.model == "flux-kontext-pro"
    assert spec.seed == 0
    (step,) = spec.steps
    assert step.image == ()  # text-to-image
    assert step.params_for(step.model) == DEFAULT_PARAMS
    assert step.seed == derive_seed(0, "make")
    assert spec.outputs == {"make": "make"}
    assert [v.id for v in spec.variants] == ["default"]


def test_inserting_a_step_reseeds_no_other_step(write_recipe: WriteRecipe) -> None:
    before = load_recipe(write_recipe("""
        version: 1
        name: seeds
        seed: 5
        steps:
          - {id: a, prompt: one}
          - {id: c, prompt: three}
    """, "before.yaml"))
    after = load_recipe(write_recipe("""
        version: 1
        name: seeds
        seed: 5
        steps:
          - {id: a, prompt: one}
          - {id: b, prompt: two}
          - {id: c, prompt: three}
    """, "after.yaml"))
    assert before.step("a").seed == after.step("a").seed
    assert before.step("c").seed == after.step("c").seed


def test_multi_reference_and_earlier_steps(write_recipe: WriteRecipe) -> None:
    spec = load_recipe(write_recipe("""
        version: 1
        name: refs
        inputs: {photo: photo.png}
        steps:
          - {id: a, image: photo, prompt: one}
          - {id: b, image: [a, photo], prompt: two}
          - {id: c, image: [photo], prompt: three}
    """))
    assert [s.image for s in spec.steps] == [("photo",), ("a", "photo"), ("photo",)]


def test_unquoted_ratio_and_edge_ratios_are_accepted(write_recipe: WriteRecipe) -> None:
    spec = load_recipe(write_recipe("""
        version: 1
        name: ratios
        defaults: {aspect_ratio: 21:9}
        steps:
          - {id: a, prompt: one}
          - {id: b, prompt: two, aspect_ratio: "9:21"}
    """))
    assert [s.params_for(s.model).aspect_ratio for s in spec.steps] == ["21:9", "9:21"]


def test_warnings_do_not_fail_validation(write_recipe: WriteRecipe) -> None:
    spec = load_recipe(write_recipe("""
        version: 1
        name: warn
        defaults: {safety_tolerance: 5}
        inputs: {photo: photo.png, unused: photo.png}
        steps:
          - {id: a, prompt: one}
          - {id: b, image: photo, prompt: two}
          - {id: c, prompt: three, safety_tolerance: 4}
    """), display="warn.yaml")
    assert [w.format() for w in spec.warnings] == [
        "warn.yaml:3:30: warning: defaults.safety_tolerance: the API applies at most 2 to a "
        "step with an input image (steps[1])",
        "warn.yaml:4:28: warning: inputs: input 'unused' is not used by any step",
        "warn.yaml:8:46: warning: steps[2] (id: c): safety_tolerance: the API applies at most 2 "
        "to a step with an input image",
    ]


def test_env_shows_templates_only_the_variables_the_recipe_allows(
        write_recipe: WriteRecipe) -> None:
    path = write_recipe("""
        version: 1
        name: envy
        env: [BRAND]
        steps:
          - {id: a, prompt: "Brand {{ env.BRAND }} {{ env.KONTEXT_VAR_SEASON }}"}
    """)
    environ = {"BRAND": "acme", "KONTEXT_VAR_SEASON": "spring", "DATABASE_URL": "postgres://db"}
    spec = load_recipe(path, env=environ)
    assert spec.env_names == ("BRAND",)
    assert spec.steps[0].prompt_source == "Brand {{ env.BRAND }} {{ env.KONTEXT_VAR_SEASON }}"
    hidden = write_recipe("""
        version: 1
        name: envy
        steps:
          - {id: a, prompt: "Connect {{ env.DATABASE_URL }}"}
    """, "hidden.yaml")
    with pytest.raises(SpecError) as caught:
        load_recipe(hidden, env=environ, display="hidden.yaml")
    assert str(caught.value) == (
        "hidden.yaml:4:21: steps[0] (id: a): prompt: environment variable 'DATABASE_URL' is not "
        "visible to templates; list it in the recipe's `env` (env: [DATABASE_URL]) or name it "
        "KONTEXT_VAR_DATABASE_URL")
    assert "postgres" not in str(caught.value)


def test_env_never_shows_templates_a_secret_even_when_listed(write_recipe: WriteRecipe) -> None:
    secret = write_recipe("""
        version: 1
        name: envy
        env: [BFL_API_KEY, BRAND, BRAND, "not a name"]
        steps:
          - {id: a, prompt: "Key {{ env.BFL_API_KEY }}"}
    """, "secret.yaml")
    with pytest.raises(SpecError) as caught:
        load_recipe(secret, env={"BFL_API_KEY": "bfl_do_not_leak"}, display="secret.yaml")
    assert str(caught.value) == (
        "secret.yaml:3:6: env: lists \"BRAND\" more than once\n"
        "secret.yaml:3:7: env[0]: 'BFL_API_KEY' looks like a secret; templates cannot read "
        "secrets, so `env` cannot list it\n"
        "secret.yaml:3:34: env[3]: \"not a name\" is not an environment variable name (letters, "
        "digits and '_', starting with a letter or '_', at most 128 characters)\n"
        "secret.yaml:5:21: steps[0] (id: a): prompt: environment variable 'BFL_API_KEY' looks "
        "like a secret; templates cannot read secrets")
    assert "bfl_do_not_leak" not in str(caught.value)


def test_a_recipe_path_with_a_nul_character_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as caught:
        load_recipe(tmp_path / "recipe\0.yaml", display="recipe.yaml")
    assert str(caught.value) == ("recipe.yaml: the path holds a NUL character, which no file "
                                 "name can contain")


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as caught:
        load_recipe(tmp_path / "nope.yaml", display="nope.yaml")
    assert str(caught.value) == "nope.yaml: no such recipe file"
    with pytest.raises(SpecError) as caught:
        load_recipe(tmp_path, display="dir")
    assert str(caught.value) == "dir: is a directory, not a recipe file"


def test_input_symlink_out_of_the_tree_is_refused(tmp_path: Path,
                                                  write_recipe: WriteRecipe) -> None:
    outside = tmp_path.parent / f"{tmp_path.name}-outside.png"
    outside.write_bytes((tmp_path / "photo.png").read_bytes())
    os.symlink(outside, tmp_path / "link.png")
    inside = tmp_path / "sub"
    inside.mkdir()
    os.symlink(tmp_path / "photo.png", inside / "ok.png")
    path = write_recipe("""
        version: 1
        name: links
        inputs: {bad: link.png, good: sub/ok.png}
        steps:
          - {id: a, image: [bad, good], prompt: one}
    """)
    with pytest.raises(SpecError) as caught:
        load_recipe(path, display="links.yaml")
    assert str(caught.value) == (
        "links.yaml:3:15: inputs.bad: 'link.png' leads outside the recipe's directory; keep "
        "input images beside the recipe or below it")


def test_a_bom_is_allowed(write_recipe: WriteRecipe, tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbfversion: 1\nname: bom\nsteps:\n  - {id: a, prompt: x}\n")
    assert load_recipe(path).name == "bom"
