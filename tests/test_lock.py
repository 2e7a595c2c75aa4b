"""The lock (``<recipe stem>.lock``): what ``run`` writes, how it merges, and how an unreadable
one is refused, at its line, with the way out."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

import kontext_pipeline as kp
from kontext_pipeline.errors import LockError
from kontext_pipeline.server._run import BackgroundServer
from kontext_pipeline.store._lock import (
    MAX_LOCK_BYTES,
    Lock,
    LockedFile,
    LockedStep,
    lock_path,
    read_lock,
    render_lock,
    write_lock,
)
from tests.bfl_helpers import KEY
from tests.conftest import RunCli, Start, WriteRecipe

CHAIN = """
    version: 1
    name: chain
    seed: 3
    inputs: {photo: photo.png}
    steps:
      - {id: recolor, image: photo, prompt: Paint the car red}
      - {id: relight, prompt: Relight the scene at dusk, output_format: jpeg}
    outputs:
      poster: relight
      cover: relight
"""

MATRIX = """
    version: 1
    name: grid
    inputs: {photo: photo.png}
    matrix:
      color: [red, blue, green]
    steps:
      - {id: one, image: photo, prompt: "Paint it {{ color }}"}
      - {id: two, prompt: "Add a {{ color }} stripe"}
"""

DIGEST = "ab" * 32
OTHER = "cd" * 32
WAY_OUT = ("; fix it, or rewrite it from the cache alone with "
           "`kontext-pipeline run --frozen --relock pipelines/chain.yaml`")
CONFLICTED = ("; resolve the conflict, or rewrite it with `kontext-pipeline run --frozen "
              "--relock pipelines/chain.yaml`, which reads both sides and keeps each record "
              "whose image the cache or the exported files hold")


class Runner:
    """Runs the CLI against one server, one cache and ``out`` beside the recipe's folder."""

    def __init__(self, run_cli: RunCli, server: BackgroundServer, tmp_path: Path) -> None:
        self.run_cli, self.server = run_cli, server
        self.cache, self.out = tmp_path / "cache", tmp_path / "out"

    def __call__(self, recipe: Path, *args: str, key: str = KEY,
                 provider: str = "bfl") -> Result:
        return self.run_cli("run", str(recipe), "--provider", provider, "--api-base",
                            self.server.url, "--cache-dir", str(self.cache), "--out",
                            str(self.out), *args, env={"BFL_API_KEY": key})


@pytest.fixture
def runner(run_cli: RunCli, bfl_server: Start, tmp_path: Path) -> Runner:
    return Runner(run_cli, bfl_server(latency=0.01), tmp_path)


def _step(variant: str = "default", step: str = "recolor", **changes: Any) -> LockedStep:
    fields: dict[str, Any] = {
        "variant": variant, "step": step, "key": DIGEST, "model": "flux-kontext-pro",
        "seed": 1234, "prompt": "Change the car's color to blue: keep everything else",
        "params": {"aspect_ratio": None, "output_format": "png", "safety_tolerance": 2,
                   "prompt_upsampling": False},
        "inputs_sha256": (OTHER,), "output_sha256": DIGEST, "credits": 4,
        "request_id": "req-1",
        "files": (LockedFile("../out/poster-chain/recolored.png", OTHER),)}
    fields.update(changes)
    return LockedStep(**fields)


def _lock(*steps: LockedStep) -> Lock:
    return Lock("chain.yaml", "chain", "bfl", {(s.variant, s.step): s for s in steps})


# --- the file ----------------------------------------------------------------------------


def test_a_lock_is_rendered_block_style_in_a_fixed_order() -> None:
    lock = _lock(_step(), _step("color=red,size=big", "two", prompt="say \"hi\"\nthen: go",
                                credits=0.5, request_id=None, files=(), inputs_sha256=()))
    assert render_lock(lock).decode() == (
        "# kontext-pipeline lock: what `kontext-pipeline run` made from chain.yaml.\n"
        "# Commit it with the exported files; `kontext-pipeline check` verifies both. "
        "Written by `run`.\n"
        "version: 1\n"
        "recipe: chain.yaml\n"
        "pipeline: chain\n"
        "provider: bfl\n"
        "variants:\n"
        '  "color=red,size=big":\n'
        "    two:\n"
        f"      key: {DIGEST}\n"
        "      model: flux-kontext-pro\n"
        "      seed: 1234\n"
        '      prompt: "say \\"hi\\"\\nthen: go"\n'
        "      params: {aspect_ratio: null, output_format: png, safety_tolerance: 2, "
        "prompt_upsampling: false}\n"
        "      inputs_sha256: []\n"
        f"      output_sha256: {DIGEST}\n"
        "      credits: 0.5\n"
        "      request_id: null\n"
        "      files: []\n"
        "  default:\n"
        "    recolor:\n"
        f"      key: {DIGEST}\n"
        "      model: flux-kontext-pro\n"
        "      seed: 1234\n"
        "      prompt: \"Change the car's color to blue: keep everything else\"\n"
        "      params: {aspect_ratio: null, output_format: png, safety_tolerance: 2, "
        "prompt_upsampling: false}\n"
        f"      inputs_sha256: [{OTHER}]\n"
        f"      output_sha256: {DIGEST}\n"
        "      credits: 4\n"
        "      request_id: req-1\n"
        "      files:\n"
        f"        - {{path: ../out/poster-chain/recolored.png, file_sha256: {OTHER}}}\n")


@pytest.mark.parametrize("prompt", [
    "yes", "null", "123", "1.5", "- a list?", "#not a comment", "a: b", "trailing space ",
    "tab\there", "line\u2028separator", "nel\x85", "bom\ufeff", "control\x7f", "emoji \U0001f697",
    "x" * 5000, "'quoted'", "back\\slash", "",
])
def test_any_prompt_reads_back_as_written(tmp_path: Path, prompt: str) -> None:
    lock = _lock(_step(prompt=prompt, credits=1.25e-7))
    path = tmp_path / "chain.lock"
    assert write_lock(path, lock) is True
    assert read_lock(path) == lock
    assert b"\n" not in path.read_bytes().split(b"prompt: ", 1)[1].split(b"\n", 1)[0]
    assert write_lock(path, lock) is False  # the same bytes: nothing written


def test_the_files_of_a_step_are_sorted_by_path() -> None:
    step = _step(files=(LockedFile("b.png", DIGEST), LockedFile("a.png", OTHER)))
    assert [f.path for f in step.files] == ["a.png", "b.png"]


def test_lock_path_is_the_recipe_stem_beside_it() -> None:
    assert lock_path(Path("pipelines/poster-chain.yaml")) == Path("pipelines/poster-chain.lock")


def test_no_lock_reads_as_none(tmp_path: Path) -> None:
    assert read_lock(tmp_path / "chain.lock") is None


def _problems(path: Path, text: bytes | str, way_out: str = WAY_OUT) -> str:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    with pytest.raises(LockError) as caught:
        read_lock(path, recipe="pipelines/chain.yaml")
    assert str(caught.value).endswith(way_out)
    return str(caught.value).removesuffix(way_out)


def test_merge_conflict_markers_are_reported_at_their_lines(tmp_path: Path) -> None:
    path = tmp_path / "chain.lock"
    good = render_lock(_lock(_step())).decode()
    head, tail = good.split("      seed: 1234\n")
    text = (f"{head}<<<<<<< HEAD\n      seed: 1234\n=======\n      seed: 99\n"
            f">>>>>>> feature\n{tail}")
    assert _problems(path, text, CONFLICTED) == (
        f"{path}:12:1: git merge conflict marker '<<<<<<<': the lock was merged with conflicts\n"
        f"{path}:14:1: git merge conflict marker '=======': the lock was merged with conflicts\n"
        f"{path}:16:1: git merge conflict marker '>>>>>>>': the lock was merged with conflicts")


@pytest.mark.parametrize(("edit", "expected"), [
    ((f"output_sha256: {DIGEST}", "output_sha256: ABC"),
     "16:22: output_sha256 'ABC' is not a sha256 digest (64 lowercase hexadecimal digits)"),
    (("path: ../out/poster-chain/recolored.png", "path: /etc/passwd"),
     "20:18: path '/etc/passwd' is absolute; a lock's paths are relative to its folder"),
    (("path: ../out/poster-chain/recolored.png", "path: ../out/./recolored.png"),
     "20:18: path '../out/./recolored.png' is not normalised (no '.', no empty part, '..' "
     "only at its start)"),
    (("path: ../out/poster-chain/recolored.png", 'path: "out\\\\recolored.png"'),
     "20:18: path 'out\\recolored.png' uses '\\'; a lock's paths use '/' separators"),
    (("seed: 1234", "seed: twelve"), "12:13: seed must be a whole number, not 'twelve'"),
    (("credits: 4", "credits: -4"), "17:16: credits must be a number of 0 or more, not '-4'"),
    (("      request_id: req-1\n", "      request_id: req-1\n      cost: 4\n"),
     "19:7: unknown field 'cost' in step 'recolor' of variant 'default'; a lock has key, "
     "model, seed, prompt, params, inputs_sha256, output_sha256, credits, request_id, files"),
    (("      model: flux-kontext-pro\n", ""),
     "10:7: step 'recolor' of variant 'default' has no 'model'"),
    (("model: flux-kontext-pro", "model: !!python/name:os.system x"),
     "11:14: YAML tag 'tag:yaml.org,2002:python/name:os.system' is not used in a lock"),
])
def test_a_hand_edit_is_reported_at_its_line(tmp_path: Path, edit: tuple[str, str],
                                              expected: str) -> None:
    path = tmp_path / "chain.lock"
    text = render_lock(_lock(_step())).decode()
    assert edit[0] in text
    assert _problems(path, text.replace(*edit, 1)) == f"{path}:{expected}"


@pytest.mark.parametrize(("version", "cause", "expected"), [
    ("7", "newer", "3:10: version: this lock was written by a newer kontext-pipeline (version 7); "
                   "upgrade kontext-pipeline"),
    ("0", "invalid", "3:10: version: '0' is not a lock version; this kontext-pipeline reads "
                     f"version 1{WAY_OUT}"),
    ('"1"', "invalid", "3:10: version: '1' is not a lock version; this kontext-pipeline reads "
                       f"version 1{WAY_OUT}"),
    ("0x1", "invalid", "3:10: version: '0x1' is not a lock version; this kontext-pipeline reads "
                       f"version 1{WAY_OUT}"),
])
def test_the_version_is_read_first_and_reported_alone(tmp_path: Path, version: str, cause: str,
                                                      expected: str) -> None:
    path = tmp_path / "chain.lock"
    text = render_lock(_lock(_step())).decode().replace("version: 1", f"version: {version}")
    path.write_text(text.replace("      model: flux-kontext-pro\n", "      size: 4\n"))
    with pytest.raises(LockError) as caught:  # the unknown field is not reported: it may be
        read_lock(path, recipe="pipelines/chain.yaml")  # what the newer version writes
    assert (str(caught.value), caught.value.cause) == (f"{path}:{expected}", cause)


def test_an_alias_of_a_mapping_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "chain.lock"
    text = render_lock(_lock(_step(), _step(step="two"))).decode()
    text = text.replace("    recolor:\n", "    recolor: &one\n").split("    two:\n")[0]
    assert _problems(path, text + "    two: *one\n") == (
        f"{path}:9:14: a YAML anchor repeated by an alias: a lock writes each value out")


def test_a_lock_larger_than_the_bound_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "chain.lock"
    with path.open("wb") as handle:  # sparse: no disk space is used
        handle.truncate(MAX_LOCK_BYTES + 1)
    with pytest.raises(LockError) as caught:
        read_lock(path, recipe="pipelines/chain.yaml")
    assert str(caught.value) == f"{path}: is larger than a lock can be (67108864 bytes){WAY_OUT}"


def test_a_symbolic_link_is_not_followed(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere.lock"
    write_lock(real, _lock(_step()))
    (tmp_path / "chain.lock").symlink_to(real)
    with pytest.raises(LockError) as caught:
        read_lock(tmp_path / "chain.lock", recipe="pipelines/chain.yaml")
    assert str(caught.value) == (f"{tmp_path / 'chain.lock'}: is a symbolic link; a lock is "
                                 f"read only as a regular file{WAY_OUT}")


def test_text_that_is_not_utf8_or_not_yaml(tmp_path: Path) -> None:
    path = tmp_path / "chain.lock"
    assert _problems(path, b"version: 1\nrecipe: \xff\n") == f"{path}:2:9: not UTF-8 text"
    assert _problems(path, "version: [1\n") == (
        f"{path}:2:1: not readable as YAML: did not find expected ',' or ']'")
    assert _problems(path, "") == f"{path}:1:1: the lock is empty"
    assert _problems(path, "- 1\n") == f"{path}:1:1: the lock must be a mapping"


# --- what run writes ---------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_run_writes_the_lock_beside_the_recipe(runner: Runner,
                                                write_recipe: WriteRecipe) -> None:
    recipe = write_recipe(CHAIN)
    result = runner(recipe)
    assert result.exit_code == 0, result.output
    path = recipe.with_suffix(".lock")
    assert result.stdout.endswith(f", {path}\n")
    lock = read_lock(path)
    assert lock is not None
    assert (lock.recipe, lock.pipeline, lock.provider) == ("recipe.yaml", "chain", "bfl")
    manifest = json.loads((runner.out / "manifest.json").read_text())
    assert list(lock.steps) == [("default", "recolor"), ("default", "relight")]
    for step in manifest["steps"]:
        locked = lock.steps[("default", step["step"])]
        assert locked.output_sha256 == step["output_sha256"]
        assert list(locked.inputs_sha256) == step["inputs_sha256"]
        assert (locked.prompt, locked.seed, dict(locked.params)) == (
            step["prompt"], step["seed"], step["params"])
        assert locked.credits == 4
        assert locked.request_id == step["request_id"]
    relight = lock.steps[("default", "relight")]
    assert [f.path for f in relight.files] == ["out/cover.jpg", "out/poster.jpg"]
    assert {f.file_sha256 for f in relight.files} == {_sha256(runner.out / "poster.jpg")}
    recolor = lock.steps[("default", "recolor")]
    assert recolor.files == (LockedFile("out/steps/recolor.png",
                                        _sha256(runner.out / "steps" / "recolor.png")),)


def test_a_rerun_that_changes_nothing_leaves_the_lock_byte_identical(
        runner: Runner, write_recipe: WriteRecipe) -> None:
    recipe = write_recipe(CHAIN)
    assert runner(recipe).exit_code == 0
    path = recipe.with_suffix(".lock")
    before = path.read_bytes()
    written = path.stat().st_mtime_ns
    again = runner(recipe)
    assert again.exit_code == 0
    assert path.read_bytes() == before
    assert path.stat().st_mtime_ns == written  # not even written again
    assert str(path) not in again.stdout


def test_a_var_selection_keeps_the_other_variants_records(runner: Runner,
                                                          write_recipe: WriteRecipe) -> None:
    assert runner(write_recipe(MATRIX)).exit_code == 0
    recipe = write_recipe(MATRIX.replace("Add a {{ color }} stripe", "Add a {{ color }} dot"))
    before = read_lock(recipe.with_suffix(".lock"))
    assert before is not None
    assert runner(recipe, "--var", "color=blue").exit_code == 0
    after = read_lock(recipe.with_suffix(".lock"))
    assert after is not None
    assert list(after.steps) == [(v, s) for v in ("color=blue", "color=green", "color=red")
                                 for s in ("one", "two")]
    assert after.steps[("color=blue", "two")].prompt == "Add a blue dot"
    for variant in ("color=green", "color=red"):
        for step in ("one", "two"):
            assert after.steps[(variant, step)] == before.steps[(variant, step)]
    assert after.steps[("color=blue", "one")] == before.steps[("color=blue", "one")]


def test_a_whole_run_drops_what_the_recipe_no_longer_has(runner: Runner,
                                                         write_recipe: WriteRecipe) -> None:
    assert runner(write_recipe(MATRIX)).exit_code == 0
    recipe = write_recipe(MATRIX.replace("[red, blue, green]", "[red, blue]")
                          .replace("id: two", "id: stripe"))
    assert runner(recipe).exit_code == 0
    lock = read_lock(recipe.with_suffix(".lock"))
    assert lock is not None
    assert list(lock.steps) == [(v, s) for v in ("color=blue", "color=red")
                                for s in ("one", "stripe")]


def test_failed_and_skipped_steps_are_absent(runner: Runner,
                                             write_recipe: WriteRecipe) -> None:
    recipe = write_recipe(MATRIX.replace(
        '"Paint it {{ color }}"',
        "\"Paint it {{ color }}{{ ' [[content-moderated]]' if color == 'red' else '' }}\""))
    assert runner(recipe).exit_code == 1
    lock = read_lock(recipe.with_suffix(".lock"))
    assert lock is not None
    assert list(lock.steps) == [(v, s) for v in ("color=blue", "color=green")
                                for s in ("one", "two")]


def test_no_lock_neither_reads_nor_writes_one(runner: Runner,
                                              write_recipe: WriteRecipe) -> None:
    recipe = write_recipe(CHAIN)
    result = runner(recipe, "--no-lock")
    assert result.exit_code == 0, result.output
    assert not recipe.with_suffix(".lock").exists()
    recipe.with_suffix(".lock").write_text("<<<<<<< HEAD\n")
    assert runner(recipe, "--no-lock").exit_code == 0
    assert recipe.with_suffix(".lock").read_text() == "<<<<<<< HEAD\n"


def test_a_preview_run_neither_reads_nor_writes_one(runner: Runner,
                                                    write_recipe: WriteRecipe) -> None:
    recipe = write_recipe(CHAIN)
    assert runner(recipe, provider="preview").exit_code == 0
    assert not recipe.with_suffix(".lock").exists()
    recipe.with_suffix(".lock").write_text("version: 7\n")
    assert runner(recipe, provider="preview").exit_code == 0
    assert recipe.with_suffix(".lock").read_text() == "version: 7\n"


def test_an_unreadable_lock_stops_the_run_before_any_request(
        runner: Runner, write_recipe: WriteRecipe) -> None:
    recipe = write_recipe(CHAIN)
    path = recipe.with_suffix(".lock")
    path.write_text("version: 1\n<<<<<<< HEAD\n")
    result = runner(recipe)
    assert result.exit_code == 2
    assert result.stderr == (
        f"kontext-pipeline: {path}:2:1: git merge conflict marker '<<<<<<<': the lock was "
        f"merged with conflicts; resolve the conflict, or rewrite it with `kontext-pipeline "
        f"run --frozen --relock {recipe}`, which reads both sides and keeps each record whose "
        "image the cache or the exported files hold\n")
    assert runner.server.state.requests == []


def test_relock_needs_frozen(runner: Runner, write_recipe: WriteRecipe) -> None:
    result = runner(write_recipe(CHAIN), "--relock")
    assert result.exit_code == 2
    assert result.stderr == ("kontext-pipeline: --relock rewrites the lock without any request: "
                             "use it with --frozen (kontext-pipeline run --frozen --relock "
                             "RECIPE)\n")


def test_the_python_api_writes_the_lock_unless_told_not_to(
        bfl_server: Start, write_recipe: WriteRecipe, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    server = bfl_server(latency=0.01)
    recipe = write_recipe(CHAIN)
    monkeypatch.delenv("KONTEXT_CACHE_DIR", raising=False)
    options: dict[str, Any] = {"out": tmp_path / "out", "api_base": server.url, "api_key": KEY,
                               "cache_dir": tmp_path / "cache"}
    assert kp.run(recipe, lock=False, **options).ok
    assert not recipe.with_suffix(".lock").exists()
    assert kp.run(recipe, **options).ok
    assert read_lock(recipe.with_suffix(".lock")) is not None
    assert os.path.getsize(recipe.with_suffix(".lock")) > 0


def test_in_a_git_repository_no_path_leads_out_of_it(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    (repository / ".git").mkdir(parents=True)  # what marks a repository's folder
    path = repository / "pipelines" / "chain.lock"
    inside = _lock(_step(files=(LockedFile("../out/poster-chain/recolored.png", OTHER),)))
    write_lock(path, inside)
    assert read_lock(path) == inside  # up to the repository's folder: as far as a path may go
    outside = _lock(_step(files=(LockedFile("../../elsewhere/recolored.png", OTHER),)))
    write_lock(path, outside)
    with pytest.raises(LockError) as caught:
        read_lock(path, recipe="pipelines/chain.yaml")
    assert str(caught.value) == (
        f"{path}:20:18: path '../../elsewhere/recolored.png' leads out of the git repository "
        f"the lock is in ({repository}); a lock's files are in its repository{WAY_OUT}")
    write_lock(tmp_path / "chain.lock", outside)  # in no repository: it is not known where
    assert read_lock(tmp_path / "chain.lock") == outside  # it ends
