"""The bundled server's FLUX.2 endpoints: routes, validation in BFL's 422 shape, extra fields
refused, results at the requested size, and the echoed cost, input_mp and output_mp."""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

import httpx
import pytest
from PIL import Image

from kontext_pipeline.recipe._models import MODELS
from kontext_pipeline.server import ServerConfig, ServerState, create_app
from kontext_pipeline.server._network import endpoint_of
from tests.bfl_helpers import png, run

KEY = {"x-key": "bfl_anything"}
BASE = "http://testserver"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def post(state: ServerState, path: str, body: dict[str, Any]) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(state=state))
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            return await client.post(path, json=body, headers=KEY)

    return run(go())


def made(model: str, body: dict[str, Any]) -> tuple[dict[str, Any], Image.Image, ServerState]:
    """Submit ``body`` to ``model``, wait until it is ready and download the picture."""
    state = ServerState(ServerConfig(latency=0.01))

    async def go() -> tuple[dict[str, Any], bytes]:
        transport = httpx.ASGITransport(app=create_app(state=state))
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            answer = await client.post(f"/v1/{model}", json=body, headers=KEY)
            assert answer.status_code == 200, answer.text
            for _ in range(200):
                await asyncio.sleep(0.01)
                poll = (await client.get(answer.json()["polling_url"], headers=KEY)).json()
                if poll["status"] == "Ready":
                    break
            picture = await client.get(poll["result"]["sample"])
            return answer.json(), picture.content

    answer, data = run(go())
    return answer, Image.open(io.BytesIO(data)), state


@pytest.mark.parametrize("model", list(MODELS))
def test_every_model_of_the_table_has_its_endpoint(model: str) -> None:
    answer = post(ServerState(ServerConfig(latency=10)), f"/v1/{model}", {"prompt": "x"})
    assert answer.status_code == 200, answer.text
    assert endpoint_of("POST", f"/v1/{model}") == "submit"


def test_a_model_not_in_the_table_is_not_found() -> None:
    answer = post(ServerState(ServerConfig()), "/v1/flux-2-dev", {"prompt": "x"})
    assert endpoint_of("POST", "/v1/flux-2-dev") is None  # not a submit that faults name
    assert answer.status_code == 404


@pytest.mark.parametrize(("model", "body", "refused"), [
    ("flux-2-klein-4b", {"steps": 20, "guidance": 4.0, "prompt_upsampling": False},
     ["steps", "guidance", "prompt_upsampling"]),
    ("flux-2-pro", {"prompt_upsampling": False, "aspect_ratio": "1:1"},
     ["prompt_upsampling", "aspect_ratio"]),
    ("flux-2-flex", {"disable_pup": True}, ["disable_pup"]),
    ("flux-kontext-pro", {"width": 1024, "disable_pup": True}, ["width", "disable_pup"]),
    ("flux-2-klein-9b", {"input_image_5": "x"}, ["input_image_5"]),
    ("flux-kontext-max", {"nonsense": 1}, ["nonsense"]),
])
def test_a_field_the_model_does_not_take_is_refused_in_bfls_shape(
        model: str, body: dict[str, Any], refused: list[str]) -> None:
    answer = post(ServerState(ServerConfig()), f"/v1/{model}", {"prompt": "x", **body})
    assert answer.status_code == 422
    assert answer.json() == {"detail": [
        {"type": "extra_forbidden", "loc": ["body", name], "msg": "Extra inputs are not "
         "permitted", "input": body[name]} for name in refused]}


def test_out_of_range_values_are_each_reported_with_loc_and_msg() -> None:
    answer = post(ServerState(ServerConfig()), "/v1/flux-2-flex", {
        "prompt": "x", "width": 1000, "height": 48, "steps": 60, "guidance": "high",
        "safety_tolerance": 6, "output_format": "gif"})
    assert answer.status_code == 422
    assert answer.json() == {"detail": [
        {"type": "enum", "loc": ["body", "output_format"],
         "msg": "Input should be 'jpeg', 'png' or 'webp'", "input": "gif"},
        {"type": "less_than_equal", "loc": ["body", "safety_tolerance"],
         "msg": "Input should be an integer from 0 to 5", "input": 6},
        {"type": "multiple_of", "loc": ["body", "width"],
         "msg": "Input should be a multiple of 16", "input": 1000},
        {"type": "greater_than_equal", "loc": ["body", "height"],
         "msg": "Input should be 0 or greater than or equal to 64", "input": 48},
        {"type": "less_than_equal", "loc": ["body", "steps"],
         "msg": "Input should be from 1 to 50", "input": 60},
        {"type": "float_type", "loc": ["body", "guidance"],
         "msg": "Input should be a valid number", "input": "high"}]}


@pytest.mark.parametrize(("tolerance", "kind", "msg"), [
    (-1, "greater_than_equal", "Input should be an integer from 0 to 5"),
    (6, "less_than_equal", "Input should be an integer from 0 to 5"),
    (2.5, "int_type", "Input should be a valid integer"),
])
def test_a_safety_tolerance_out_of_range_says_which_side(
        tolerance: float, kind: str, msg: str) -> None:
    answer = post(ServerState(ServerConfig()), "/v1/flux-2-pro",
                  {"prompt": "x", "safety_tolerance": tolerance})
    assert answer.status_code == 422
    assert answer.json() == {"detail": [{"type": kind, "loc": ["body", "safety_tolerance"],
                                         "msg": msg, "input": tolerance}]}


def test_the_result_has_the_requested_size_and_format_and_the_answer_its_price() -> None:
    references = {"input_image": b64(png(size=(1000, 500))),
                  "input_image_2": b64(png(size=(500, 500)))}
    answer, picture, state = made("flux-2-max", {
        "prompt": "Make it red", "width": 1600, "height": 1200, "output_format": "webp",
        **references})
    assert picture.size == (1600, 1200)
    assert picture.format == "WEBP"
    # 7 for the first megapixel, 3 × 0.92 further, 3 × 0.75 of input
    assert answer["cost"] == 12.01
    assert (answer["input_mp"], answer["output_mp"]) == (0.75, 1.92)
    assert state.credits_charged == 12.01


def test_without_a_size_the_result_follows_the_first_input() -> None:
    answer, picture, _ = made("flux-2-pro", {"prompt": "x", "input_image": b64(png(
        size=(800, 608))), "width": 0, "height": 0})
    assert picture.size == (800, 608)
    assert (answer["cost"], answer["output_mp"]) == (3.7296, 0.49)  # 3 + 1.5 × 0.4864 input MP
    _, square, _ = made("flux-2-klein-9b", {"prompt": "x"})
    assert square.size == (1024, 1024)


def test_kontext_keeps_its_flat_price_and_grid() -> None:
    answer, picture, state = made("flux-kontext-max", {"prompt": "x", "aspect_ratio": "16:9",
                                                       "output_format": "jpeg"})
    assert picture.size == (1392, 752)
    assert answer["cost"] == 8
    assert isinstance(answer["cost"], int)
    assert state.credits_charged == 8


def test_the_servers_limits_are_the_tables() -> None:
    assert ServerConfig().active_limit == 24
    assert dict(ServerConfig().model_limits) == {"flux-kontext-max": 6}
