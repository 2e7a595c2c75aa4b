"""FLUX.2 end to end, through the command line and the bfl client against the bundled server on
loopback: a chain mixing models, the API's echoed cost recorded in the manifest and the lock,
and ``plan``'s estimate against what the server charges."""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from tests.bfl_helpers import KEY
from tests.conftest import PIPELINES, RunCli, Start, WriteRecipe

CHAIN = """
    version: 1
    name: chain
    seed: 11
    inputs: {photo: photo.png, logo: logo.png}
    steps:
      - {id: paint, model: flux-kontext-pro, image: photo, prompt: Paint it red,
         aspect_ratio: "3:2"}
      - {id: compose, model: flux-2-pro, image: [paint, logo], prompt: Put the logo on it,
         width: 768, height: 512}
      - {id: refine, model: flux-2-flex, steps: 30, guidance: 4, prompt: Sharpen it}
      - {id: finish, model: flux-2-klein-9b, prompt: Brighten it, output_format: webp}
    outputs: {final: finish}
    """


def paid_run(run_cli: RunCli, recipe: Path, url: str, out: Path, *args: str) -> dict[str, Any]:
    result = run_cli("run", str(recipe), "--api-base", url, "--cache-dir",
                     str(out.parent / "cache"), "--out", str(out), *args,
                     env={"BFL_API_KEY": KEY})
    assert result.exit_code == 0, result.output
    manifest: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    return manifest


def test_a_chain_of_models_feeds_each_output_to_the_next_and_records_the_echoed_cost(
        run_cli: RunCli, write_recipe: WriteRecipe, bfl_server: Start, tmp_path: Path) -> None:
    recipe = write_recipe(CHAIN)
    Image.new("RGB", (96, 64), (250, 200, 0)).save(tmp_path / "logo.png")
    server = bfl_server()
    manifest = paid_run(run_cli, recipe, server.url, tmp_path / "out")
    steps = manifest["steps"]
    assert [s["model"] for s in steps] == ["flux-kontext-pro", "flux-2-pro", "flux-2-flex",
                                           "flux-2-klein-9b"]
    for earlier, step in itertools.pairwise(steps):
        assert step["inputs_sha256"][0] == earlier["output_sha256"]
    logo = hashlib.sha256((tmp_path / "logo.png").read_bytes()).hexdigest()
    assert steps[1]["inputs_sha256"] == [steps[0]["output_sha256"], logo]  # in recipe order
    submits = [r for r in server.state.requests if r.method == "POST"]
    bodies = [r.body or {} for r in submits]
    assert [r.path for r in submits] == [f"/v1/{s['model']}" for s in steps]
    assert bodies[2]["steps"] == 30
    assert bodies[2]["guidance"] == 4.0
    assert "width" not in bodies[2]  # flex follows its input: compose's 768×512
    tasks = list(server.state.tasks.values())
    assert [t.size for t in tasks] == [(1248, 832), (768, 512), (768, 512), (768, 512)]
    echoed = [t.cost for t in tasks]
    assert [s["credits"] for s in steps] == echoed
    # Kontext's flat 4; then per megapixel, of the output and of each input image
    assert echoed[0] == 4
    assert all(isinstance(c, float) for c in echoed[1:])
    assert manifest["totals"]["credits"] == round(sum(echoed), 2)
    assert server.state.credits_charged == pytest.approx(sum(echoed))
    report = (tmp_path / "out" / "report.html").read_text()
    assert "768×512 · png · tolerance 2<" in report  # compose's requested size
    assert "png · tolerance 2 · steps 30 · guidance 4.0<" in report  # refine's own fields
    lock = yaml.safe_load((tmp_path / "recipe.lock").read_text())
    assert [s["credits"] for s in lock["variants"]["default"].values()] == echoed


@pytest.mark.parametrize("name", ["flux2-compose", "model-comparison"])
def test_plans_estimate_is_within_10_percent_of_what_the_server_charges(
        run_cli: RunCli, bfl_server: Start, tmp_path: Path, name: str) -> None:
    shutil.copytree(PIPELINES, tmp_path / "pipelines")
    recipe = tmp_path / "pipelines" / f"{name}.yaml"
    planned = run_cli("plan", str(recipe), "--json", "--cache-dir", str(tmp_path / "cache"))
    assert planned.exit_code == 0, planned.output
    estimate = json.loads(planned.stdout)["totals"]["credits"]
    server = bfl_server()
    manifest = paid_run(run_cli, recipe, server.url, tmp_path / "out")
    charged = server.state.credits_charged
    assert manifest["totals"]["credits"] == round(charged, 2)
    assert abs(estimate - charged) <= 0.1 * charged, (estimate, charged)
    per_step = {task["step"] + "/" + task["variant"]: task["credits"]
                for task in json.loads(planned.stdout)["tasks"]}
    for step in manifest["steps"]:
        planned_step = per_step[step["step"] + "/" + step["variant"]]
        assert abs(planned_step - step["credits"]) <= 0.1 * step["credits"], step["step"]


SIZED = """
    version: 1
    name: sized
    inputs: {photo: photo.png}
    steps:
      - {id: big, model: flux-2-pro, image: photo, prompt: Make it big, width: 2048,
         height: 1024}
      - {id: small, model: flux-kontext-pro, prompt: Make it small}
    """


def test_max_credits_uses_the_estimate_and_plan_labels_it(
        run_cli: RunCli, write_recipe: WriteRecipe, bfl_server: Start, tmp_path: Path) -> None:
    recipe = write_recipe(SIZED)  # photo.png is 32×24: 0.000768 MP
    server = bfl_server()
    # 3 + 1.5 × (2.097152 - 1) + 1.5 × 0.000768 = 4.647 → 4.65; Kontext's 4 after it
    planned = run_cli("plan", str(recipe), "--cache-dir", str(tmp_path / "cache"))
    assert planned.exit_code == 0, planned.output
    assert "miss  key " in planned.stdout
    assert planned.stdout.count("~4.65 credits (estimate)") == 1
    assert planned.stdout.count("  4 credits\n") == 1
    assert planned.stdout.splitlines()[-2] == (
        "0 of 2 cached; the rest cost ~8.65 credits ($0.0865, estimate)")
    refused = run_cli("run", str(recipe), "--api-base", server.url, "--cache-dir",
                      str(tmp_path / "cache"), "--max-credits", "8.6", env={"BFL_API_KEY": KEY})
    assert refused.exit_code == 3
    assert refused.stderr == ("kontext-pipeline: the steps that are not cached would cost "
                              "~8.65 credits ($0.0865, estimate), more than --max-credits 8.6; "
                              "nothing was submitted\n")
    assert server.state.requests == []
    ran = run_cli("run", str(recipe), "--api-base", server.url, "--cache-dir",
                  str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--max-credits", "8.7",
                  env={"BFL_API_KEY": KEY})
    assert ran.exit_code == 0, ran.output
    assert ran.stderr.splitlines()[0] == ("run: 2 steps: 0 cached, 2 to run, expected cost "
                                          "~8.65 credits ($0.0865, estimate)")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    # the server's charge, unrounded: 3 + 1.5 × 1.097152 + 1.5 × 0.000768
    assert [s["credits"] for s in manifest["steps"]] == [4.64688, 4]


def test_the_reports_total_is_a_number_of_credits(
        run_cli: RunCli, write_recipe: WriteRecipe, bfl_server: Start, tmp_path: Path) -> None:
    recipe = write_recipe("""
        version: 1
        name: whole
        steps:
          - {id: square, model: flux-2-pro, prompt: A red apple, width: 512, height: 512}
          - {id: flat, model: flux-kontext-pro, prompt: Make it green}
    """)
    manifest = paid_run(run_cli, recipe, bfl_server().url, tmp_path / "out")
    # 3.0 (the first megapixel, of which 512×512 is less; echoed as a float) and Kontext's 4
    assert [s["credits"] for s in manifest["steps"]] == [3.0, 4]
    assert isinstance(manifest["steps"][0]["credits"], float)
    report = (tmp_path / "out" / "report.html").read_text()
    assert "<b>7</b>credits ($0.07)</li>" in report


def test_without_an_echoed_cost_the_estimate_is_recorded_with_one_warning(
        run_cli: RunCli, write_recipe: WriteRecipe, bfl_server: Start, tmp_path: Path) -> None:
    recipe = write_recipe(CHAIN)
    Image.new("RGB", (96, 64), (250, 200, 0)).save(tmp_path / "logo.png")
    planned = run_cli("plan", str(recipe), "--json", "--cache-dir", str(tmp_path / "cache"))
    assert planned.exit_code == 0, planned.output
    estimates = [task["credits"] for task in json.loads(planned.stdout)["tasks"]]
    server = bfl_server(echo_cost=False)
    result = run_cli("run", str(recipe), "--api-base", server.url, "--cache-dir",
                     str(tmp_path / "cache"), "--out", str(tmp_path / "out"),
                     env={"BFL_API_KEY": KEY})
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [s["credits"] for s in manifest["steps"]] == estimates  # Kontext's 4 is its price
    warnings = [line for line in result.stderr.splitlines() if "echoed no cost" in line]
    assert warnings == [
        f"chain/default/compose: warning: the API echoed no cost for this step; its estimate, "
        f"~{estimates[1]:g} credits, is recorded instead (and so for any other step of this run "
        "priced per megapixel without one)"]
