"""``kontext-pipeline run`` against the bundled server on loopback: chains, the cache, --frozen,
failures, budgets and the manifest contract."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from kontext_pipeline.server._run import BackgroundServer
from tests.bfl_helpers import KEY
from tests.conftest import RunCli, Start, WriteRecipe

CHAIN = """
    version: 1
    name: chain
    seed: 3
    vars: {color: red, light: dusk}
    inputs: {photo: photo.png}
    steps:
      - id: recolor
        image: photo
        prompt: Paint the car {{ color }}
      - id: sign
        prompt: Replace the sign text with OPEN
      - id: relight
        prompt: Relight the scene at {{ light }}
        output_format: jpeg
    outputs:
      poster: relight
"""

MATRIX = """
    version: 1
    name: grid
    inputs: {photo: photo.png}
    matrix:
      color: [red, blue, green, gold]
    steps:
      - {id: one, image: photo, prompt: "Paint it {{ color }}"}
      - {id: two, prompt: "Add a {{ color }} stripe"}
      - {id: three, prompt: "Frame the {{ color }} picture"}
"""


class Runner:
    """Runs the CLI against one server, one cache and one output directory."""

    def __init__(self, run_cli: RunCli, server: BackgroundServer, tmp_path: Path) -> None:
        self.run_cli, self.server = run_cli, server
        self.cache, self.out = tmp_path / "cache", tmp_path / "out"

    def __call__(self, recipe: Path, *args: str, key: str = KEY) -> Result:
        return self.run_cli("run", str(recipe), "--provider", "bfl", "--api-base",
                            self.server.url, "--cache-dir", str(self.cache), "--out",
                            str(self.out), *args, env={"BFL_API_KEY": key})

    def submits(self) -> list[str]:
        """The prompts the server was asked to make, in order."""
        return [r.body["prompt"] for r in self.server.state.requests
                if r.method == "POST" and r.body is not None and r.status == 200]

    def manifest(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.out / "manifest.json").read_text())
        return data


@pytest.fixture
def runner(run_cli: RunCli, bfl_server: Start, tmp_path: Path) -> Runner:
    return Runner(run_cli, bfl_server(latency=0.05), tmp_path)


def test_a_chain_runs_and_feeds_each_output_into_the_next(runner: Runner,
                                                          write_recipe: WriteRecipe) -> None:
    result = runner(write_recipe(CHAIN))
    assert result.exit_code == 0, result.output
    assert result.stdout == (f"chain: 3 steps, 0 cached, 3 made, 12 credits -> "
                             f"{runner.out / 'manifest.json'}, {runner.out / 'report.html'}, "
                             f"{runner.out.parent / 'recipe.lock'}\n")
    manifest = runner.manifest()
    recolor, sign, relight = manifest["steps"]
    assert sign["inputs_sha256"] == [recolor["output_sha256"]]
    assert relight["inputs_sha256"] == [sign["output_sha256"]]
    assert relight["output"] == "poster.jpg"
    assert (runner.out / "poster.jpg").read_bytes()[:3] == b"\xff\xd8\xff"
    assert manifest["totals"] == {"steps": 3, "cache_hits": 0, "calls": 3, "credits": 12,
                                  "failed": 0}
    assert runner.submits() == ["Paint the car red", "Replace the sign text with OPEN",
                                "Relight the scene at dusk"]


def test_a_second_run_makes_no_request_and_the_same_bytes(runner: Runner,
                                                          write_recipe: WriteRecipe) -> None:
    recipe = write_recipe(CHAIN)
    assert runner(recipe).exit_code == 0
    first = (runner.out / "poster.jpg").read_bytes()
    seen = len(runner.server.state.requests)
    again = runner(recipe)
    assert again.exit_code == 0
    assert len(runner.server.state.requests) == seen
    assert (runner.out / "poster.jpg").read_bytes() == first
    assert runner.manifest()["totals"] == {"steps": 3, "cache_hits": 3, "calls": 0,
                                           "credits": 0, "failed": 0}


@pytest.mark.parametrize(("edit", "requested"), [
    (("Replace the sign text with OPEN", "Replace the sign text with SHUT"),
     ["Replace the sign text with SHUT", "Relight the scene at dusk"]),
    (("{color: red,", "{color: teal,"),
     ["Paint the car teal", "Replace the sign text with OPEN", "Relight the scene at dusk"]),
])
def test_a_change_requests_exactly_that_step_and_those_after_it(
    edit: tuple[str, str], requested: list[str], runner: Runner, write_recipe: WriteRecipe
) -> None:
    assert runner(write_recipe(CHAIN)).exit_code == 0
    before = len(runner.submits())
    assert runner(write_recipe(CHAIN.replace(*edit))).exit_code == 0
    assert runner.submits()[before:] == requested


def test_a_var_only_one_step_uses_reruns_that_step_and_those_after(
    runner: Runner, write_recipe: WriteRecipe
) -> None:
    recipe = write_recipe(CHAIN)
    assert runner(recipe).exit_code == 0
    before = len(runner.submits())
    assert runner(recipe, "--var", "light=dawn").exit_code == 0
    assert runner.submits()[before:] == ["Relight the scene at dawn"]


def test_variants_run_concurrently(run_cli: RunCli, bfl_server: Start, tmp_path: Path,
                                  write_recipe: WriteRecipe) -> None:
    runner = Runner(run_cli, bfl_server(latency=0.5), tmp_path)  # long enough to overlap
    result = runner(write_recipe(MATRIX))
    assert result.exit_code == 0, result.output
    assert runner.server.state.peak_active > 1  # a bound: how many overlap depends on the load
    assert len(runner.manifest()["steps"]) == 12
    assert sorted(p.name for p in runner.out.iterdir()) == [
        ".kontext-export.json", "color=blue", "color=gold", "color=green", "color=red",
        "manifest.json", "report.html", "steps"]
    assert (runner.out / "color=red" / "three.png").is_file()


def test_a_single_step_is_one_step(runner: Runner, write_recipe: WriteRecipe) -> None:
    one_step = CHAIN.split("      - id: sign", maxsplit=1)[0] + "    outputs: {car: recolor}\n"
    result = runner(write_recipe(one_step))
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[0] == ("run: 1 step: 0 cached, 1 to run, expected cost 4 "
                                             "credits ($0.04)")
    assert result.stdout == (f"chain: 1 step, 0 cached, 1 made, 4 credits -> "
                             f"{runner.out / 'manifest.json'}, {runner.out / 'report.html'}, "
                             f"{runner.out.parent / 'recipe.lock'}\n")


def test_frozen_needs_no_key_and_makes_no_request(runner: Runner,
                                                  write_recipe: WriteRecipe) -> None:
    recipe = write_recipe(CHAIN)
    assert runner(recipe).exit_code == 0
    seen = len(runner.server.state.requests)
    frozen = runner(recipe, "--frozen", key="")
    assert frozen.exit_code == 0, frozen.output
    assert len(runner.server.state.requests) == seen


def test_frozen_with_a_changed_prompt_exits_3_naming_the_step(
    runner: Runner, write_recipe: WriteRecipe
) -> None:
    assert runner(write_recipe(CHAIN)).exit_code == 0
    seen = len(runner.server.state.requests)
    changed = write_recipe(CHAIN.replace("at {{ light }}", "at {{ light }}, softly"))
    result = runner(changed, "--frozen", key="")
    assert result.exit_code == 3
    assert len(runner.server.state.requests) == seen
    lines = result.stderr.splitlines()
    assert lines[0] == ("kontext-pipeline: --frozen: 1 step not in the cache; no provider was "
                        "called:")
    assert lines[1].startswith("  chain / default / relight: no cached result for key ")


def test_frozen_names_downstream_steps_and_why(runner: Runner,
                                               write_recipe: WriteRecipe) -> None:
    result = runner(write_recipe(CHAIN), "--frozen", key="")
    assert result.exit_code == 3
    lines = result.stderr.splitlines()
    assert lines[0] == ("kontext-pipeline: --frozen: 3 steps not in the cache; no provider was "
                        "called:")
    assert lines[2:] == ["  chain / default / sign: its input 'recolor' is not cached",
                         "  chain / default / relight: its input 'sign' is not cached"]
    assert runner.server.state.requests == []


def test_a_moderated_step_fails_its_variant_only(runner: Runner,
                                                 write_recipe: WriteRecipe) -> None:
    recipe = write_recipe(MATRIX.replace('"Add a {{ color }} stripe"',
                                         '"Add a {{ color }} stripe{{ \' [[content-moderated]]\' '
                                         'if color == \'blue\' else \'\' }}"'))
    result = runner(recipe)
    assert result.exit_code == 1
    assert result.stdout == (  # the moderated step made nothing, and cost nothing
        f"grid: 12 steps, 0 cached, 10 made, 1 failed, 1 skipped, 40 credits -> "
        f"{runner.out / 'manifest.json'}, {runner.out / 'report.html'}, "
        f"{runner.out.parent / 'recipe.lock'}\n")
    manifest = runner.manifest()
    status = {(s["variant"], s["step"]): s["status"] for s in manifest["steps"]}
    assert status[("color=blue", "two")] == "failed"
    assert status[("color=blue", "three")] == "skipped"
    assert all(v == "done" for (variant, _), v in status.items() if variant != "color=blue")
    summary = result.stderr.split("kontext-pipeline: 2 steps failed:\n", 1)[1].splitlines()
    assert summary[0].startswith("  grid / color=blue / two: Content Moderated: the API's "
                                 "moderation refused the result")
    assert summary[1] == ("  grid / color=blue / three: skipped: its input 'two' did not "
                          "finish")
    assert not (runner.out / "color=blue" / "three.png").exists()
    assert (runner.out / "color=red" / "three.png").exists()


def test_a_truncated_cache_object_is_reported_and_regenerated(
    runner: Runner, write_recipe: WriteRecipe, run_cli: RunCli
) -> None:
    recipe = write_recipe(CHAIN)
    assert runner(recipe).exit_code == 0
    digest = runner.manifest()["steps"][2]["output_sha256"]
    object_path = runner.cache / "v1" / "objects" / digest[:2] / digest
    object_path.write_bytes(object_path.read_bytes()[:100])
    verify = run_cli("cache", "verify", "--cache-dir", str(runner.cache))
    assert verify.exit_code == 1
    assert f"object {digest[:12]} does not match its hash" in verify.stdout
    before = len(runner.submits())
    again = runner(recipe, "--no-lock")  # else its exported file refills the cache
    assert again.exit_code == 0
    assert f"cache object {digest[:12]} of entry " in again.stderr
    assert " is 100 bytes, expected " in again.stderr
    assert runner.submits()[before:] == ["Relight the scene at dusk"]
    assert run_cli("cache", "verify", "--cache-dir", str(runner.cache)).exit_code == 0


def test_max_credits_refuses_before_submitting(runner: Runner,
                                               write_recipe: WriteRecipe) -> None:
    result = runner(write_recipe(CHAIN), "--max-credits", "11")
    assert result.exit_code == 3
    assert result.stderr == ("kontext-pipeline: the steps that are not cached would cost 12 "
                             "credits ($0.12), more than --max-credits 11; nothing was "
                             "submitted\n")
    assert runner.server.state.requests == []
    assert runner(write_recipe(CHAIN), "--max-credits", "12").exit_code == 0


def test_a_refused_key_stops_everything(run_cli: RunCli, bfl_server: Start, tmp_path: Path,
                                        write_recipe: WriteRecipe) -> None:
    server = bfl_server(api_keys=frozenset({"bfl_the_right_one"}))
    runner = Runner(run_cli, server, tmp_path)
    result = runner(write_recipe(MATRIX))
    assert result.exit_code == 1
    assert result.stderr.endswith("kontext-pipeline: the API refused the key (HTTP 403) on "
                                  "submit: check BFL_API_KEY (Invalid API key)\n")
    assert len(server.state.paths("POST")) <= 4  # those already in flight, no more
    assert KEY not in result.output


def test_bfl_without_a_key_stops_before_any_request(runner: Runner,
                                                    write_recipe: WriteRecipe) -> None:
    result = runner(write_recipe(CHAIN), key="")
    assert result.exit_code == 2
    assert result.stderr.endswith(
        "kontext-pipeline: BFL_API_KEY is not set: the bfl provider needs an API key. Set "
        "BFL_API_KEY, or run offline with --provider preview\n")
    assert runner.server.state.requests == []


def test_json_prints_the_manifest_and_nothing_else(runner: Runner,
                                                   write_recipe: WriteRecipe) -> None:
    result = runner(write_recipe(CHAIN), "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == runner.manifest()
    assert result.stderr == ""


def test_the_key_is_in_no_output_or_file(runner: Runner, write_recipe: WriteRecipe) -> None:
    result = runner(write_recipe(CHAIN))
    assert result.exit_code == 0
    assert KEY not in result.output
    for path in [*runner.cache.rglob("*"), *runner.out.rglob("*")]:
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_unchanged_outputs_are_not_copied_again_but_edited_ones_are(
    runner: Runner, write_recipe: WriteRecipe
) -> None:
    recipe = write_recipe(CHAIN)
    assert runner(recipe).exit_code == 0
    poster = runner.out / "poster.jpg"
    original = poster.read_bytes()
    inode = poster.stat().st_ino
    assert runner(recipe).exit_code == 0
    assert poster.stat().st_ino == inode  # untouched: not written again
    poster.write_bytes(b"edited by hand")
    assert runner(recipe).exit_code == 0
    assert poster.read_bytes() == original  # restored from the cache
