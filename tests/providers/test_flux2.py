"""The bfl provider speaks each model's own request, against the bundled server on loopback.

The bodies expected here are written out by hand from BFL's documentation (``bfl-api.md``
§FLUX.2), not derived from the models table, so that a wrong table entry fails a test.
"""

from __future__ import annotations

import base64
import hashlib
import io
from typing import Any

import pytest
from PIL import Image

from kontext_pipeline._support.images import inspect_bytes
from kontext_pipeline.errors import RequestRejectedError
from kontext_pipeline.providers._base import EditRequest, EditResult
from kontext_pipeline.providers._policies import DEFAULT_MODEL_LIMITS, DEFAULT_TOTAL_LIMIT
from kontext_pipeline.recipe._models import MODELS
from tests.bfl_helpers import generate, png, provider_for, run
from tests.conftest import Start

FIELDS = ("input_image", "input_image_2", "input_image_3", "input_image_4", "input_image_5",
          "input_image_6", "input_image_7", "input_image_8")
REFERENCES = {"flux-kontext-pro": 4, "flux-kontext-max": 4, "flux-2-pro": 8, "flux-2-max": 8,
              "flux-2-flex": 8, "flux-2-klein-4b": 4, "flux-2-klein-9b": 4}

# every request field set; each model is sent the ones it takes, in its own form
EVERY_FIELD: dict[str, Any] = {
    "aspect_ratio": "3:2", "width": 512, "height": 384, "steps": 20, "guidance": 3.5,
    "output_format": "webp", "safety_tolerance": 1, "prompt_upsampling": False}
SENT: dict[str, dict[str, Any]] = {
    "flux-kontext-pro": {"aspect_ratio": "3:2", "output_format": "webp", "safety_tolerance": 1,
                         "prompt_upsampling": False},
    "flux-2-pro": {"width": 512, "height": 384, "output_format": "webp", "safety_tolerance": 1,
                   "disable_pup": True},
    "flux-2-flex": {"width": 512, "height": 384, "steps": 20, "guidance": 3.5,
                    "output_format": "webp", "safety_tolerance": 1, "prompt_upsampling": False},
    "flux-2-klein-4b": {"width": 512, "height": 384, "output_format": "webp",
                        "safety_tolerance": 1},
}
SENT["flux-kontext-max"] = SENT["flux-kontext-pro"]
SENT["flux-2-max"] = SENT["flux-2-pro"]
SENT["flux-2-klein-9b"] = SENT["flux-2-klein-4b"]
# (result size, echoed cost) for 512×384 from REFERENCES[model] 64×48 images (0.003072 MP
# each): Kontext's grid size for 3:2 and flat price; FLUX.2's first megapixel (the output is
# less than one) plus the per-input price of the references (8 or 4 × 0.003072 MP of 10^6
# pixels), unrounded as BFL echoes it
SIZE_AND_COST: dict[str, tuple[tuple[int, int], float]] = {
    "flux-kontext-pro": ((1248, 832), 4), "flux-kontext-max": ((1248, 832), 8),
    "flux-2-pro": ((512, 384), 3.036864), "flux-2-max": ((512, 384), 7.073728),
    "flux-2-flex": ((512, 384), 5.12288), "flux-2-klein-4b": ((512, 384), 1.401229),
    "flux-2-klein-9b": ((512, 384), 1.502458)}


def b64_digest(data: bytes) -> str:
    return hashlib.sha256(base64.b64encode(data)).hexdigest()


def request(model: str, *images: bytes, prompt: str = "Put them together",
            **fields: Any) -> EditRequest:
    return EditRequest(model=model, prompt=prompt, seed=42, images=images, label="test/step",
                       **fields)


def references(count: int) -> list[bytes]:
    return [png((20 + 25 * n, 200 - 20 * n, 90)) for n in range(count)]


def test_the_tested_models_are_the_tables() -> None:
    assert list(REFERENCES) == list(MODELS)
    assert set(SENT) == set(MODELS)


@pytest.mark.parametrize("model", list(REFERENCES))
def test_each_model_is_sent_what_it_takes_in_its_own_form_and_nothing_else(
        bfl_server: Start, model: str) -> None:
    server = bfl_server()
    images = references(REFERENCES[model])
    result: EditResult = run(generate(provider_for(server), request(model, *images,
                                                                    **EVERY_FIELD)))
    submit = server.state.requests[0]
    assert (submit.method, submit.path, submit.status) == ("POST", f"/v1/{model}", 200)
    assert submit.body == {"prompt": "Put them together", "seed": 42, **SENT[model],
                           **{f: b64_digest(i) for f, i in zip(FIELDS, images, strict=False)}}
    size, cost = SIZE_AND_COST[model]
    assert inspect_bytes(result.image).format == "WEBP"
    assert (result.width, result.height) == size
    assert result.cost == cost
    assert isinstance(result.cost, int) == model.startswith("flux-kontext")


@pytest.mark.parametrize(("model", "sent"), [
    ("flux-kontext-pro", {"prompt_upsampling": True}),
    ("flux-2-pro", {"disable_pup": False}),
    ("flux-2-max", {"disable_pup": False}),
    ("flux-2-flex", {"prompt_upsampling": True}),
    ("flux-2-klein-9b", {}),  # no upsampling control: nothing is sent
])
def test_prompt_upsampling_reaches_each_model_in_its_form(
        bfl_server: Start, model: str, sent: dict[str, Any]) -> None:
    server = bfl_server()
    run(generate(provider_for(server), request(model, prompt_upsampling=True)))
    body = server.state.requests[0].body
    assert body is not None
    assert {k: v for k, v in body.items() if k in ("prompt_upsampling", "disable_pup")} == sent


def test_a_flux2_result_follows_the_first_reference_without_a_size(bfl_server: Start) -> None:
    server = bfl_server()
    first = png(size=(640, 480))
    result = run(generate(provider_for(server), request("flux-2-pro", first, png())))
    assert (result.width, result.height) == (640, 480)
    body = server.state.requests[0].body
    assert body is not None
    assert "width" not in body
    assert "height" not in body
    text = run(generate(provider_for(server), request("flux-2-klein-4b")))
    assert (text.width, text.height) == (1024, 1024)
    assert text.cost == 1.404858  # 1.4 for the first megapixel, 0.1 × 0.048576 further


def big_png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize(("model", "fields", "said"), [
    ("flux-2-pro", {"width": 1000, "height": 768}, "width: Input should be a multiple of 16"),
    ("flux-2-max", {"width": 1024, "height": 32},
     "height: Input should be 0 or greater than or equal to 64"),
    ("flux-2-pro", {"width": 2064, "height": 2048},
     "Value error, width × height must be at most 4 megapixels, not 4.03"),
    ("flux-2-flex", {"steps": 51}, "steps: Input should be from 1 to 50"),
    ("flux-2-flex", {"steps": 0}, "steps: Input should be from 1 to 50"),
    ("flux-2-flex", {"guidance": 1.0}, "guidance: Input should be from 1.5 to 10"),
    ("flux-2-flex", {"guidance": 10.5}, "guidance: Input should be from 1.5 to 10"),
    ("flux-2-klein-4b", {"safety_tolerance": 6},
     "safety_tolerance: Input should be an integer from 0 to 5"),
    ("flux-kontext-max", {"safety_tolerance": 7},
     "safety_tolerance: Input should be an integer from 0 to 6"),
    ("flux-2-klein-9b", {"width": 1024, "height": 1030},
     "height: Input should be a multiple of 16"),
])
def test_an_out_of_range_value_is_refused_with_bfls_loc_and_msg(
        bfl_server: Start, model: str, fields: dict[str, Any], said: str) -> None:
    server = bfl_server()
    with pytest.raises(RequestRejectedError) as caught:
        run(generate(provider_for(server), request(model, **fields)))
    assert str(caught.value) == (
        f"test/step: the API rejected the request (HTTP 422) ({said})")
    assert [r.status for r in server.state.requests] == [422]  # not retried


def test_input_and_output_over_9_megapixels_are_refused(bfl_server: Start) -> None:
    server = bfl_server()
    with pytest.raises(RequestRejectedError) as caught:
        run(generate(provider_for(server), request(
            "flux-2-pro", big_png((2576, 2048)), width=2048, height=2048)))
    assert str(caught.value) == (  # 5.03 + 4 megapixels of 2^20 pixels
        "test/step: the API rejected the request (HTTP 422) (Value error, input images and "
        "output must total at most 9 megapixels, not 9.03)")
    # klein has no total limit: the same request passes, and is priced per megapixel (of 10^6)
    result = run(generate(provider_for(server), request(
        "flux-2-klein-4b", big_png((2576, 2048)), width=2048, height=2048)))
    assert (result.width, result.height) == (2048, 2048)
    assert result.cost == 2.246995  # 1.4 + 0.1 × 3.194304 further MP + 0.1 × 5.275648 input MP


def test_an_output_that_follows_its_input_counts_in_the_9_megapixels(
        bfl_server: Start) -> None:
    server = bfl_server()
    with pytest.raises(RequestRejectedError) as caught:
        run(generate(provider_for(server), request("flux-2-pro", big_png((2576, 2048)))))
    # 2576×2048 (5.03) made at most 4 megapixels in multiples of 16: 2288×1824 (3.98)
    assert str(caught.value) == (
        "test/step: the API rejected the request (HTTP 422) (Value error, input images and "
        "output must total at most 9 megapixels, not 9.01)")
    result = run(generate(provider_for(server), request(
        "flux-2-klein-4b", big_png((2576, 2048)))))
    assert (result.width, result.height) == (2288, 1824)


def test_more_references_than_a_model_takes_are_never_sent(bfl_server: Start) -> None:
    server = bfl_server()
    with pytest.raises(ValueError, match=r"^flux-2-klein-4b takes at most 4 input images, not 5$"):
        run(generate(provider_for(server), request("flux-2-klein-4b", *references(5))))
    assert server.state.requests == []


def test_concurrency_limits_come_from_the_models_table() -> None:
    assert DEFAULT_TOTAL_LIMIT == 24
    assert dict(DEFAULT_MODEL_LIMITS) == {"flux-kontext-max": 6}
