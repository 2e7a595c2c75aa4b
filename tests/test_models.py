"""The models table: one entry per model, and what the recipe side reads from it (fields, the
request's form, prices, the cache key's parameters, a model per variant)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from kontext_pipeline import SpecError, load_recipe
from kontext_pipeline.plan._plan import Plan, build_plan
from kontext_pipeline.recipe._models import (
    MEGAPIXEL,
    MODELS,
    PRICE_MEGAPIXEL,
    REQUEST_FIELDS,
    Model,
    estimate_credits,
    megapixels,
    model_key,
    price_megapixels,
    resolve_model,
    takers,
)
from kontext_pipeline.recipe._spec import Params
from tests.conftest import PIPELINES, ROOT, WriteRecipe

KONTEXT = ["flux-kontext-pro", "flux-kontext-max"]
DASH = "\N{EN DASH}"  # how the docs' table writes a range
FLUX2 = ["flux-2-pro", "flux-2-max", "flux-2-flex", "flux-2-klein-4b", "flux-2-klein-9b"]


def test_every_model_is_one_entry_with_bfls_facts() -> None:
    assert list(MODELS) == [*KONTEXT, *FLUX2]
    facts = {name: (m.endpoint, m.family, m.references, m.safety, m.safety_with_image,
                    m.concurrency, m.api_output_format) for name, m in MODELS.items()}
    assert facts == {
        "flux-kontext-pro": ("/v1/flux-kontext-pro", "Kontext", 4, 6, 2, 24, "png"),
        "flux-kontext-max": ("/v1/flux-kontext-max", "Kontext", 4, 6, 2, 6, "png"),
        "flux-2-pro": ("/v1/flux-2-pro", "FLUX.2", 8, 5, None, 24, "jpeg"),
        "flux-2-max": ("/v1/flux-2-max", "FLUX.2", 8, 5, None, 24, "jpeg"),
        "flux-2-flex": ("/v1/flux-2-flex", "FLUX.2", 8, 5, None, 24, "jpeg"),
        "flux-2-klein-4b": ("/v1/flux-2-klein-4b", "FLUX.2", 4, 5, None, 24, "jpeg"),
        "flux-2-klein-9b": ("/v1/flux-2-klein-9b", "FLUX.2", 4, 5, None, 24, "jpeg"),
    }
    flex = MODELS["flux-2-flex"]
    assert flex.steps is not None
    assert flex.guidance is not None
    assert (flex.steps.minimum, flex.steps.maximum, flex.steps.default) == (1, 50, 50)
    assert (flex.guidance.minimum, flex.guidance.maximum, flex.guidance.default) == (1.5, 10, 5)
    totals = {name: m.sizes.max_total_mp for name, m in MODELS.items() if m.sizes}
    assert totals == {"flux-2-pro": 9, "flux-2-max": 9, "flux-2-flex": 9,
                      "flux-2-klein-4b": None, "flux-2-klein-9b": None}


def test_the_fields_each_model_takes_and_refuses() -> None:
    refused = {name: m.refuses for name, m in MODELS.items()}
    assert refused == {
        "flux-kontext-pro": ("width", "height", "steps", "guidance"),
        "flux-kontext-max": ("width", "height", "steps", "guidance"),
        "flux-2-pro": ("aspect_ratio", "steps", "guidance"),
        "flux-2-max": ("aspect_ratio", "steps", "guidance"),
        "flux-2-flex": ("aspect_ratio",),
        "flux-2-klein-4b": ("aspect_ratio", "steps", "guidance", "prompt_upsampling"),
        "flux-2-klein-9b": ("aspect_ratio", "steps", "guidance", "prompt_upsampling"),
    }
    assert all(set(m.fields) | set(m.refuses) == set(REQUEST_FIELDS) for m in MODELS.values())
    assert [takers(f) for f in ("aspect_ratio", "width", "steps", "output_format")] == [
        "the Kontext models", "the FLUX.2 models", "flux-2-flex",
        ", ".join([*KONTEXT, *FLUX2[:-1]]) + " and flux-2-klein-9b"]


def body(model: str, **written: object) -> dict[str, object]:
    return MODELS[model].body_fields(Params.of(model, written).as_dict())


def test_prompt_upsampling_false_reaches_each_model_in_its_own_form() -> None:
    common = {"output_format": "png", "safety_tolerance": 2}
    assert body("flux-kontext-pro") == {**common, "prompt_upsampling": False}
    assert body("flux-2-pro") == {**common, "disable_pup": True}
    assert body("flux-2-max", prompt_upsampling=True) == {**common, "disable_pup": False}
    assert body("flux-2-flex") == {**common, "prompt_upsampling": False, "steps": 50,
                                   "guidance": 5.0}
    assert body("flux-2-klein-4b") == common


def test_a_field_a_model_does_not_take_is_never_sent() -> None:
    written = {"aspect_ratio": "16:9", "width": 1024, "height": 768, "steps": 20,
               "guidance": 3, "output_format": "webp", "safety_tolerance": 1,
               "prompt_upsampling": False}
    assert body("flux-kontext-max", **written) == {
        "aspect_ratio": "16:9", "output_format": "webp", "safety_tolerance": 1,
        "prompt_upsampling": False}
    assert body("flux-2-pro", **written) == {"width": 1024, "height": 768,
                                             "output_format": "webp", "safety_tolerance": 1,
                                             "disable_pup": True}
    assert body("flux-2-flex", **written) == {"width": 1024, "height": 768, "steps": 20,
                                              "guidance": 3.0, "output_format": "webp",
                                              "safety_tolerance": 1, "prompt_upsampling": False}
    assert body("flux-2-klein-9b", **written) == {"width": 1024, "height": 768,
                                                  "output_format": "webp", "safety_tolerance": 1}
    assert "aspect_ratio" not in body("flux-kontext-pro")  # unset: the API's choice


def test_prices_per_image_and_per_megapixel() -> None:
    # the size limits' megapixel is BFL's help's ("Maximum 4 megapixels (e.g., 2048 × 2048)"),
    # the prices' the smaller, conservative one
    assert MEGAPIXEL == 2**20
    assert megapixels(1024, 1024) == 1.0
    assert megapixels(2048, 2048) == 4.0
    assert PRICE_MEGAPIXEL == 1_000_000
    assert price_megapixels(1000, 1000) == 1.0
    assert price_megapixels(1024, 1024) == 1.048576
    assert estimate_credits("flux-kontext-pro", 4.0, [3.0, 3.0]) == 4
    assert estimate_credits("flux-kontext-max", 0.5) == 8
    assert estimate_credits("flux-2-pro", 1.0) == 3
    assert estimate_credits("flux-2-pro", 0.25) == 3  # the first megapixel is the least
    assert estimate_credits("flux-2-pro", 2.0, [1.0, 0.5]) == 3 + 1.5 + 2.25
    assert estimate_credits("flux-2-max", 4.0, [1.0]) == 7 + 9 + 3
    assert estimate_credits("flux-2-flex", 1.5, [2.0]) == 5 + 2.5 + 10
    assert estimate_credits("flux-2-klein-4b", 2.0, [1.0, 1.0]) == pytest.approx(1.7)
    assert estimate_credits("flux-2-klein-9b", 3.0, [1.0]) == pytest.approx(2.1)


def test_an_estimate_is_rounded_up_to_a_hundredth_of_a_credit() -> None:
    one = price_megapixels(1024, 1024)
    assert estimate_credits("flux-2-pro", one) == 3.08  # 3.072864
    assert estimate_credits("flux-2-pro", one, [one]) == 4.65  # 4.645728
    assert estimate_credits("flux-2-klein-4b", 1.0, [0.123]) == 1.42  # 1.4123
    assert estimate_credits("flux-2-pro", 1.0, [1 / 3]) == 3.5  # 3.4999…: exact, not 3.51
    with pytest.raises(KeyError):
        estimate_credits("flux-dev", 1.0)


def keys(plan: Plan) -> dict[str, str]:
    return {f"{t.variant}/{t.step}": t.key(["0" * 64] * len(t.images)) for t in plan.tasks}


def test_the_keys_of_kontext_steps_did_not_move() -> None:
    # computed before the FLUX.2 models came: a Kontext key holds the same four parameters
    chain = keys(build_plan(load_recipe(PIPELINES / "poster-chain.yaml")))
    assert chain["default/recolor"] == (
        "43d902983777965af229dcea1a915db63a62b3e5c587d7236506c7d7a9e57179")
    assert chain["default/relight"] == (
        "15fb73cc2441432661d9eb1e3f74e56c8343d3687e7bf652c1fe40aee47a1a04")
    matrix = keys(build_plan(load_recipe(PIPELINES / "color-matrix.yaml")))
    assert matrix["color=red,finish=glossy/recolor"] == (
        "57391d6c598a7204ff0160ed36188a1488a660f2a3b3c4e87093a9dcff4acb43")
    multi = keys(build_plan(load_recipe(PIPELINES / "multi-reference.yaml")))
    assert multi["default/seat-driver"] == (
        "de743ce5d5fe564ed6663c12b6881115c095b83046747163789892af7245550c")


def test_a_matrix_gives_each_variant_its_model_and_that_models_parameters() -> None:
    plan = build_plan(load_recipe(PIPELINES / "model-comparison.yaml"))
    params = {t.model: t.params.as_dict() for t in plan.tasks}
    kontext = {"aspect_ratio": "3:2", "output_format": "png", "safety_tolerance": 2,
               "prompt_upsampling": False}
    flux2 = {"width": 1024, "height": 672, "output_format": "png", "safety_tolerance": 2}
    assert params == {
        "flux-kontext-pro": kontext,
        "flux-kontext-max": kontext,
        "flux-2-pro": {**flux2, "prompt_upsampling": False},
        "flux-2-flex": {**flux2, "prompt_upsampling": False, "steps": 50, "guidance": 5.0},
        "flux-2-klein-9b": flux2,
    }
    assert [t.variant for t in plan.tasks] == [f"model={m}" for m in params]
    assert len({t.static_key for t in plan.tasks}) == 5
    selected = build_plan(load_recipe(PIPELINES / "model-comparison.yaml"),
                          overrides={"model": "flux-2-flex"})
    assert [t.model for t in selected.tasks] == ["flux-2-flex"]


def test_the_flux2_example_composes_six_references_then_refines_and_touches_up() -> None:
    spec = load_recipe(PIPELINES / "flux2-compose.yaml")
    plan = build_plan(spec)
    compose, refine, touch_up = plan.tasks
    assert [t.model for t in plan.tasks] == ["flux-2-pro", "flux-2-flex", "flux-2-klein-4b"]
    assert [i.name for i in compose.images] == ["street", "car", "shop", "driver", "friend",
                                                "logo"]
    assert [i.name for i in refine.images] == ["compose"]
    assert [i.name for i in touch_up.images] == ["refine"]
    assert (refine.params.steps, refine.params.guidance) == (40, 4.5)
    assert {(t.params.width, t.params.height) for t in plan.tasks} == {(1024, 768)}


def test_flex_defaults_are_explicit_so_writing_them_changes_no_key(
        write_recipe: WriteRecipe) -> None:
    def key(extra: str) -> str | None:
        spec = load_recipe(write_recipe(f"""
            version: 1
            name: flex
            model: flux-2-flex
            steps:
              - {{id: make, prompt: A red apple{extra}}}
        """))
        return build_plan(spec).tasks[0].static_key

    plain = key("")
    assert plain is not None
    assert key(", steps: 50, guidance: 5") == plain
    assert key(", guidance: 5.0") == plain
    assert key(", guidance: 5.5") != plain
    assert key(", steps: 49") != plain


def test_a_templated_model_is_each_variants_model_in_prompts(write_recipe: WriteRecipe) -> None:
    spec = load_recipe(write_recipe("""
        version: 1
        name: compare
        model: "{{model}}"
        matrix:
          model: [flux-kontext-pro, flux-2-klein-4b]
        steps:
          - id: a
            prompt: A red apple by {{ pipeline.model }}
          - id: b
            model: flux-2-pro
            prompt: After {{ steps.a.model }}, by {{ pipeline.model }}
    """))
    a, b = spec.steps
    assert (a.model, model_key(a.model)) == ("{{model}}", "model")
    assert a.models == {"model=flux-kontext-pro": "flux-kontext-pro",
                        "model=flux-2-klein-4b": "flux-2-klein-4b"}
    assert set(b.models.values()) == {"flux-2-pro"}
    prompts = [t.prompt for t in build_plan(spec).tasks]
    assert prompts == ["A red apple by flux-kontext-pro",
                       "After flux-kontext-pro, by flux-kontext-pro",
                       "A red apple by flux-2-klein-4b",
                       "After flux-2-klein-4b, by flux-2-klein-4b"]
    assert resolve_model("flux-2-max", {"model": "flux-2-pro"}) == "flux-2-max"
    assert resolve_model("{{ model }}", {}) is None


def test_klein_takes_prompt_upsampling_false_and_sends_none(write_recipe: WriteRecipe) -> None:
    spec = load_recipe(write_recipe("""
        version: 1
        name: klein
        model: flux-2-klein-9b
        defaults: {prompt_upsampling: false}
        steps:
          - {id: a, prompt: A red apple, prompt_upsampling: false}
    """))
    assert spec.warnings == ()
    assert "prompt_upsampling" not in build_plan(spec).tasks[0].params.as_dict()


def five_megapixels(folder: Path) -> None:
    Image.new("L", (2560, 2048), 128).save(folder / "big.png")  # 5 × 2^20 pixels


@pytest.mark.parametrize("step", [
    "{id: a, prompt: p, width: 2048, height: 2048}",  # exactly 4 megapixels
    "{id: a, prompt: p, width: 64, height: 64}",
    "{id: a, image: big, prompt: p, width: 2048, height: 2032}",  # 5 + 3.97
    "{id: a, image: big, prompt: p, width: 2048, height: 2048}",  # 5 + 4: exactly 9
])
def test_sizes_at_the_edges_are_accepted(write_recipe: WriteRecipe, step: str) -> None:
    path = write_recipe(f"""
        version: 1
        name: edges
        model: flux-2-pro
        inputs: {{big: big.png}}
        steps:
          - {{id: first, prompt: p}}
          - {step}
    """)
    five_megapixels(path.parent)
    spec = load_recipe(path)
    assert [s.id for s in spec.steps] == ["first", "a"]


def test_a_chained_input_counts_as_its_steps_output_and_klein_has_no_total(
        write_recipe: WriteRecipe) -> None:
    path = write_recipe("""
        version: 1
        name: chained
        inputs: {big: big.png, also: big.png}
        steps:
          - {id: first, model: flux-2-pro, prompt: p}
          - {id: both, model: flux-2-pro, image: [big, first], prompt: p, width: 2000,
             height: 2000}
          - {id: klein, model: flux-2-klein-4b, image: [big, also, both], prompt: p,
             width: 2048, height: 2048}
    """)
    five_megapixels(path.parent)
    with pytest.raises(SpecError) as refused:
        load_recipe(path)
    # 5 (big) + 1 (first's 1024×1024 result) + 3.81; klein's 14.81 has no limit
    assert [p.message for p in refused.value.problems] == [
        "steps[1] (id: both): image: the input images (6.00 megapixels) and the 2000×2000 "
        "output (3.81) make 9.81 megapixels; flux-2-pro takes at most 9 megapixels of input "
        "and output together",
    ]


def test_an_output_that_follows_its_input_counts_per_variant(write_recipe: WriteRecipe) -> None:
    path = write_recipe("""
        version: 1
        name: followed
        matrix: {m: [flux-2-pro, flux-2-klein-4b]}
        inputs: {big: big.png}
        steps:
          - {id: first, model: flux-2-pro, prompt: p, width: 2048, height: 2048}
          - {id: both, model: "{{ m }}", image: [big, first], prompt: p}
    """)
    five_megapixels(path.parent)
    with pytest.raises(SpecError) as refused:
        load_recipe(path)
    # big's 2560×2048 made at most 4 megapixels, multiples of 16: 2288×1824 (3.98)
    assert [p.message for p in refused.value.problems] == [
        "steps[1] (id: both): image: the input images (9.00 megapixels) and the 2288×1824 "
        "output (3.98, the first image's size) make 12.98 megapixels; flux-2-pro takes at "
        "most 9 megapixels of input and output together (variant m=flux-2-pro)",
    ]


def test_a_default_applies_only_where_taken_and_a_step_field_is_checked_per_model(
        write_recipe: WriteRecipe) -> None:
    spec = load_recipe(write_recipe("""
        version: 1
        name: mixed
        defaults: {aspect_ratio: "4:3", width: 1024, height: 768, guidance: 3}
        steps:
          - {id: a, prompt: p}
          - {id: b, prompt: p, model: flux-2-flex}
          - {id: c, prompt: p, model: flux-2-pro, safety_tolerance: 5}
    """))
    params = [s.params_for(s.model).as_dict() for s in spec.steps]
    assert [p.get("aspect_ratio") for p in params] == ["4:3", None, None]
    assert [p.get("width") for p in params] == [None, 1024, 1024]
    assert [p.get("guidance") for p in params] == [None, 3.0, None]
    with pytest.raises(SpecError) as refused:
        load_recipe(write_recipe("""
            version: 1
            name: mixed
            matrix: {model: [flux-2-pro, flux-2-flex]}
            steps:
              - {id: a, prompt: p, model: "{{ model }}", steps: 0}
        """))
    assert [p.message for p in refused.value.problems] == [
        "steps[0] (id: a): steps: 0 is below the minimum of 1 for flux-2-flex "
        "(variant model=flux-2-flex)",
        "steps[0] (id: a): steps: flux-2-pro does not take `steps` (only flux-2-flex does) "
        "(variant model=flux-2-pro)",
    ]


def docs_row(model: Model) -> str:
    """The row of docs/recipe-reference.md's models table that ``model``'s entry makes."""
    sizes = model.sizes
    size = "`aspect_ratio`"
    if sizes is not None:
        size = (f"`width`, `height`: ≥ {sizes.minimum}, ÷ {sizes.multiple}, "
                f"≤ {sizes.max_output_mp:g} MP")
        if sizes.max_total_mp is not None:
            size += f"; inputs + output ≤ {sizes.max_total_mp:g} MP"
    own = [f"`{name}` {r.minimum:g}{DASH}{r.maximum:g} ({r.default:g})"
           for name, r in (("steps", model.steps), ("guidance", model.guidance)) if r]
    if model.upsampling is not None:
        own.append("`prompt_upsampling`" + (" (sent as `disable_pup`)"
                                            if model.upsampling == "disable_pup" else ""))
    safety = f"0{DASH}{model.safety}"
    if model.safety_with_image is not None:
        safety += f" ({model.safety_with_image} with an input image)"
    price = model.price
    credits = (f"{price.first:g} per image" if price.per_image else
               f"{price.first:g} + {price.further:g} per further MP + "
               f"{price.per_input:g} per input MP")
    return (f"| `{model.name}` | {model.references} | {size} | "
            f"{', '.join(own) or 'none (no prompt upsampling)'} | {safety} | {credits} | "
            f"{model.concurrency} |")


def test_the_recipe_reference_shows_the_models_table() -> None:
    text = (ROOT / "docs" / "recipe-reference.md").read_text(encoding="utf-8")
    table = re.search(r"^\| model \| references \|.*\n\|[-|]+\|\n((?:\|.*\n)+)", text, re.M)
    assert table is not None
    assert table[1].splitlines() == [docs_row(m) for m in MODELS.values()]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/recipe-reference.md#models" in readme
