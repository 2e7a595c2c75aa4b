"""build_plan: rendered prompts, concrete seeds, and cache keys that change exactly when they
should."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image

from kontext_pipeline import Plan, TemplateError, UsageError, build_plan, load_recipe
from kontext_pipeline.recipe._keys import KEY_SCHEMA, cache_key
from kontext_pipeline.recipe._templating import compilations
from tests.conftest import PIPELINES, WriteRecipe

CHAIN = """
    version: 1
    name: chain
    seed: 10
    vars: {color: red, mood: calm}
    inputs: {photo: photo.png}
    steps:
      - id: first
        image: photo
        prompt: Paint it {{ color }}
      - id: second
        prompt: Make the mood {{ mood }}
      - id: third
        image: photo
        prompt: A {{ color }} twin, {{ steps.first.prompt | lower }}
        aspect_ratio: "4:3"
"""


def plan_of(path: Path, **overrides: str) -> Plan:
    return build_plan(load_recipe(path), overrides=overrides)


def keys(plan: Plan) -> dict[str, str | None]:
    return {task.step: task.static_key for task in plan.tasks}


def test_pinned_keys_of_the_bundled_recipes() -> None:
    chain = plan_of(PIPELINES / "poster-chain.yaml")
    assert keys(chain) == {
        "recolor": "21920ac7a8f6417fca24d267a0ebff665891b2485a752e3f8722feec41e95f75",
        "sign": None,  # reads recolor's output: known once it exists
        "relight": None,
    }
    text = plan_of(PIPELINES / "text-to-image.yaml")
    assert text.tasks[0].static_key == (
        "7a156e0879e358cec378c9e6fd83662e1117ff9f75b4f8d90d55ff6f28078663")
    multi = plan_of(PIPELINES / "multi-reference.yaml")
    assert multi.tasks[0].static_key == (
        "a2092cc0e7b9fdff6a1376fc2a66676c8cf06cd5b589ab8e05409392aeef37f6")


def test_key_is_the_documented_document() -> None:
    plan = plan_of(PIPELINES / "poster-chain.yaml")
    task = plan.tasks[0]
    street = (PIPELINES / "images" / "street.jpg").read_bytes()
    document = {
        "schema": KEY_SCHEMA,
        "provider": "bfl",
        "model": "flux-kontext-pro",
        "prompt": "Change the car's color to blue, keep everything else unchanged",
        "seed": 4110452625,
        "input_sha256": [hashlib.sha256(street).hexdigest()],
        "params": {"aspect_ratio": None, "output_format": "png", "safety_tolerance": 2,
                   "prompt_upsampling": False},
    }
    assert task.request_document([hashlib.sha256(street).hexdigest()]) == document
    assert task.static_key == cache_key(document)


def test_same_recipe_same_plan(write_recipe: WriteRecipe) -> None:
    path = write_recipe(CHAIN)
    assert plan_of(path) == plan_of(path)
    assert keys(plan_of(path)) == keys(plan_of(path))


def test_downstream_keys_follow_the_parent_output_bytes(write_recipe: WriteRecipe) -> None:
    second = plan_of(write_recipe(CHAIN)).tasks[1]
    assert second.key(["aa" * 32]) != second.key(["bb" * 32])
    with pytest.raises(ValueError, match="has 1 input images, got 2 hashes"):
        second.key(["aa" * 32, "bb" * 32])


# (edit, steps whose static key changes, steps whose rendered prompt or seed changes). The
# second step reads the first step's output, so its key is known only at run time: there it
# changes when its own request or the first step's output bytes change.
@pytest.mark.parametrize(("edit", "keyed", "requested"), [
    (("Paint it {{ color }}", "Paint it {{ color }} now"), {"first", "third"},
     {"first", "third"}),
    (("Make the mood", "Make the feeling"), set(), {"second"}),
    (("A {{ color }} twin", "A {{ color }} double"), {"third"}, {"third"}),
    (("seed: 10", "seed: 11"), {"first", "third"}, {"first", "second", "third"}),
    (('aspect_ratio: "4:3"', 'aspect_ratio: "3:4"'), {"third"}, {"third"}),
    (("mood: calm}", "mood: wild}"), set(), {"second"}),
    (("{color: red,", "{color: blue,"), {"first", "third"}, {"first", "third"}),
])
def test_an_edit_changes_exactly_the_keys_it_should(
    edit: tuple[str, str], keyed: set[str], requested: set[str], write_recipe: WriteRecipe
) -> None:
    before = plan_of(write_recipe(CHAIN, "before.yaml"))
    after = plan_of(write_recipe(CHAIN.replace(*edit), "after.yaml"))
    pairs = list(zip(before.tasks, after.tasks, strict=True))
    assert {t.step for t, u in pairs if t.static_key != u.static_key} == keyed
    assert {t.step for t, u in pairs
            if t.request_document(["00" * 32] * len(t.images))
            != u.request_document(["00" * 32] * len(u.images))} == requested


def test_one_byte_of_an_input_image_changes_the_keys_that_read_it(
    write_recipe: WriteRecipe, tmp_path: Path
) -> None:
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "photo.bmp")
    path = write_recipe(CHAIN.replace("photo.png", "photo.bmp"))
    before = keys(plan_of(path))
    photo = tmp_path / "photo.bmp"
    data = bytearray(photo.read_bytes())
    data[-1] ^= 0x01  # one byte of one pixel: BMP stores pixels uncompressed
    photo.write_bytes(bytes(data))
    after = keys(plan_of(path))
    assert {k for k in before if before[k] != after[k]} == {"first", "third"}


def test_provider_is_part_of_the_key(write_recipe: WriteRecipe) -> None:
    spec = load_recipe(write_recipe(CHAIN))
    bfl = build_plan(spec, provider="bfl").tasks[0]
    preview = build_plan(spec, provider="preview").tasks[0]
    assert bfl.static_key != preview.static_key


def test_overrides_and_variant_selection() -> None:
    spec = load_recipe(PIPELINES / "color-matrix.yaml")
    plan = build_plan(spec, overrides={"color": "teal", "finish": "matte"})
    assert [v.id for v in plan.variants] == ["color=teal,finish=matte,sign=Teal Tuesday"]
    assert plan.tasks[0].prompt == ("Repaint the car teal with a matte finish, keep the street, "
                                    "the shop and the lighting unchanged")
    assert plan.credits == 8


def test_a_var_override_renders_into_the_prompt() -> None:
    spec = load_recipe(PIPELINES / "poster-chain.yaml")
    plan = build_plan(spec, overrides={"color": "green"})
    assert plan.tasks[0].prompt == "Change the car's color to green, keep everything else unchanged"
    assert plan.variables["color"] == "green"
    assert plan.credits == 4 + 4 + 8


def test_unknown_override_is_a_usage_error() -> None:
    spec = load_recipe(PIPELINES / "poster-chain.yaml")
    with pytest.raises(UsageError) as caught:
        build_plan(spec, overrides={"colour": "green"})
    assert str(caught.value) == (
        f"--var colour: {spec.file} has no variable 'colour' (did you mean 'color'?); declare it "
        "under `vars`")


def test_selection_that_matches_nothing_is_a_usage_error() -> None:
    spec = load_recipe(PIPELINES / "color-matrix.yaml")
    with pytest.raises(UsageError) as caught:
        build_plan(spec, overrides={"color": "pink"})
    assert str(caught.value) == (
        f"--var color=pink selects no variant of {spec.file}; the matrix has color = black, red, "
        "teal, yellow")


def test_an_override_that_breaks_a_template_is_reported_at_its_line(
    write_recipe: WriteRecipe,
) -> None:
    path = write_recipe("""
        version: 1
        name: broken
        vars: {count: "3"}
        steps:
          - id: a
            prompt: |
              Make copies:
              {{ 12 // count | int }}
    """)
    spec = load_recipe(path, display="broken.yaml")
    assert build_plan(spec).tasks[0].prompt == "Make copies:\n4"
    with pytest.raises(TemplateError) as caught:
        build_plan(spec, overrides={"count": "0"})
    assert [p.format() for p in caught.value.problems] == [
        "broken.yaml:8:7: steps[0] (id: a): prompt: ZeroDivisionError: integer division or "
        "modulo by zero"]


def test_the_plan_renders_within_a_budget_of_its_own_and_stops_where_it_runs_out(
    write_recipe: WriteRecipe,
) -> None:
    """Validated with a small loop, planned with a large one: each render stays within its own
    bounds, together they would build 41 GB of text."""
    steps = "".join(f"  - id: s{i}\n    prompt: \"{{% set s = 'x' * 10000 %}}{{% for i in "
                    "range(n | int) %}{% set t = s ~ 'y' %}{% endfor %}x\"\n" for i in range(40))
    path = write_recipe("version: 1\nname: heavy\nvars: {n: '1'}\nmatrix:\n"
                        "  a: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]\n"
                        "  b: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]\n"
                        "steps:\n" + steps)
    spec = load_recipe(path, display="heavy.yaml")
    assert len(build_plan(spec).tasks) == 256 * 40
    with pytest.raises(TemplateError) as caught:
        build_plan(spec, overrides={"n": "400"})
    assert [p.format() for p in caught.value.problems] == [
        "heavy.yaml:11:13: steps[1] (id: s1): prompt: refused by the template sandbox: the "
        "recipe's templates do more than 500000000 units of work in all (every step of every "
        "variant); use fewer variants or simpler templates (variant a=0,b=3)"]


def test_each_template_is_compiled_once_by_validation_and_the_plan_renders_those(
    write_recipe: WriteRecipe,
) -> None:
    """Three steps, two of them written alike, four variants: validation compiles two templates
    (and renders all twelve prompts), the spec keeps them, and planning (twice) compiles none."""
    path = write_recipe("""
        version: 1
        name: once
        matrix: {color: [red, blue], size: [small, large]}
        steps:
          - {id: a, prompt: "Paint it {{ color }}"}
          - {id: b, prompt: "Make it {{ size }}"}
          - {id: c, prompt: "Paint it {{ color }}"}
    """)
    before = compilations()
    spec = load_recipe(path)
    assert compilations() - before == 2
    assert spec.steps[0].prompt is spec.steps[2].prompt
    compiled = [step.prompt for step in spec.steps]
    plans = [build_plan(spec), build_plan(spec, overrides={"color": "blue"})]
    assert compilations() - before == 2
    assert [step.prompt for step in spec.steps] == compiled
    assert [(t.variant, t.step, t.prompt) for t in plans[1].tasks] == [
        ("color=blue,size=small", "a", "Paint it blue"),
        ("color=blue,size=small", "b", "Make it small"),
        ("color=blue,size=small", "c", "Paint it blue"),
        ("color=blue,size=large", "a", "Paint it blue"),
        ("color=blue,size=large", "b", "Make it large"),
        ("color=blue,size=large", "c", "Paint it blue")]
    assert len(plans[0].tasks) == 12


def test_validation_and_the_plan_resolve_models_and_seeds_alike(
    write_recipe: WriteRecipe,
) -> None:
    """What a later prompt reads of an earlier step (rendered by validation and by the plan)
    is the step's model and seed in the spec and in its task."""
    path = write_recipe("""
        version: 1
        name: alike
        model: flux-kontext-max
        seed: 5
        steps:
          - {id: a, prompt: "First"}
          - {id: b, prompt: "Second", model: flux-kontext-pro, seed: 9}
          - id: c
            prompt: >-
              {{ steps.a.model }} {{ steps.a.seed }} {{ steps.b.model }} {{ steps.b.seed }}
              {{ pipeline.model }} {{ pipeline.seed }}
    """)
    spec = load_recipe(path)
    a, b, _ = spec.steps
    tasks = build_plan(spec).tasks
    assert [(t.model, t.seed) for t in tasks[:2]] == [(a.model, a.seed), (b.model, b.seed)]
    assert (a.model, a.seed != 5, b.model, b.seed) == ("flux-kontext-max", True,
                                                       "flux-kontext-pro", 9)
    assert tasks[2].prompt == f"{a.model} {a.seed} {b.model} {b.seed} flux-kontext-max 5"
