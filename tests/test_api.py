"""The Python API as the design gives it: ``kp.run`` and ``await kp.arun``, their arguments, and
what they raise or report; the README's library section is run as it is written."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import kontext_pipeline as kp
from tests.bfl_helpers import KEY
from tests.conftest import PIPELINES, ROOT, Start, WriteRecipe

CHAIN = PIPELINES / "poster-chain.yaml"


@pytest.fixture(autouse=True)
def quiet_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No key or cache directory of the machine running the tests leaks in."""
    monkeypatch.delenv("BFL_API_KEY", raising=False)
    monkeypatch.delenv("BFL_API_BASE", raising=False)
    monkeypatch.setenv("KONTEXT_CACHE_DIR", str(tmp_path / "default-cache"))


def library_example() -> str:
    """The README's library section: its first Python block."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Library\n", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_library_example_runs_as_written(tmp_path: Path) -> None:
    example = library_example()
    assert len(example.strip().splitlines()) <= 4  # an import, a blank line, three lines at most
    shutil.copytree(PIPELINES, tmp_path / "pipelines")
    env = {**os.environ, "KONTEXT_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    env.pop("BFL_API_KEY", None)
    done = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout == "True out/poster/poster.png miss\n"
    with Image.open(tmp_path / "out/poster/poster.png") as image:
        assert image.format == "PNG"


def test_run_exports_the_outputs_and_returns_the_manifest_model(tmp_path: Path) -> None:
    result = kp.run(str(CHAIN), out=tmp_path / "out", provider="preview",
                    cache_dir=tmp_path / "cache")
    assert result.ok
    assert result.failures == ()
    assert result.out_dir == tmp_path / "out"
    assert isinstance(result.manifest, kp.Manifest)
    assert [s.cache for s in result.manifest.steps] == ["miss"] * len(result.manifest.steps)
    assert result.manifest.pipeline == "poster-chain"
    assert result.manifest.totals.steps == len(result.manifest.steps)
    assert set(result.outputs) == {s.output for s in result.manifest.steps if s.output}
    with pytest.raises(TypeError):
        result.outputs["poster.png"] = tmp_path  # type: ignore[index]  # read-only on purpose
    for name, path in result.outputs.items():
        assert path == tmp_path / "out" / name
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            image.load()
    again = kp.run(CHAIN, out=str(tmp_path / "out"), provider="preview",
                   cache_dir=str(tmp_path / "cache"))
    assert [s.cache for s in again.manifest.steps] == ["hit"] * len(again.manifest.steps)
    assert again.manifest.totals.calls == 0
    assert {n: p.read_bytes() for n, p in again.outputs.items()} == {
        n: p.read_bytes() for n, p in result.outputs.items()}


def test_arun_runs_inside_a_running_event_loop(tmp_path: Path) -> None:
    async def main() -> kp.RunResult:
        return await kp.arun(CHAIN, out=tmp_path / "out", provider="preview",
                             cache_dir=tmp_path / "cache", vars={"color": "green"})

    result = asyncio.run(main())
    assert result.ok
    assert all("green" in step.prompt for step in result.manifest.steps
               if step.step == "recolor")


def test_run_called_from_inside_an_event_loop_runs_in_a_thread_of_its_own(
        tmp_path: Path) -> None:
    async def notebook_cell() -> kp.RunResult:
        return kp.run(CHAIN, out=tmp_path / "out", provider="preview",
                      cache_dir=tmp_path / "cache")

    assert asyncio.run(notebook_cell()).ok


def test_a_missing_recipe_raises_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(kp.SpecError) as caught:
        kp.run(tmp_path / "nope.yaml", provider="preview")
    assert str(caught.value) == f"{tmp_path / 'nope.yaml'}: no such recipe file"
    assert isinstance(caught.value, kp.KontextError)


def test_an_invalid_recipe_raises_with_every_problem(write_recipe: WriteRecipe) -> None:
    recipe = write_recipe("""
        version: 1
        name: broken
        steps:
          - {id: a, prompt: "x", seed: -1}
          - {id: a, prompt: "y"}
    """)
    with pytest.raises(kp.SpecError) as caught:
        kp.run(recipe, provider="preview")
    assert [(p.line, p.is_error) for p in caught.value.problems] == [(4, True), (5, True)]


def test_without_a_key_the_bfl_provider_refuses_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(kp.UsageError) as caught:
        kp.run(CHAIN, out=tmp_path / "out", cache_dir=tmp_path / "cache")
    assert str(caught.value) == (
        "BFL_API_KEY is not set: the bfl provider needs an API key. Set BFL_API_KEY, or run "
        "offline with --provider preview")
    assert not (tmp_path / "out").exists()


def test_a_refused_key_raises_an_authentication_error(bfl_server: Start,
                                                      tmp_path: Path) -> None:
    server = bfl_server(api_keys=frozenset({KEY}))
    shutil.copytree(PIPELINES, tmp_path / "pipelines")  # a bfl run writes a lock beside it
    chain = tmp_path / "pipelines" / CHAIN.name
    with pytest.raises(kp.AuthenticationError):
        kp.run(chain, out=tmp_path / "out", cache_dir=tmp_path / "cache",
               api_base=server.url, api_key="bfl_not_the_key_0123456789")
    accepted = kp.run(chain, out=tmp_path / "out", cache_dir=tmp_path / "cache",
                      api_base=server.url, api_key=KEY)
    assert accepted.ok
    assert accepted.manifest.provider == "bfl"


def test_a_moderated_step_is_a_failure_not_an_exception(bfl_server: Start,
                                                        write_recipe: WriteRecipe) -> None:
    recipe = write_recipe("""
        version: 1
        name: grid
        inputs: {photo: photo.png}
        matrix: {color: [red, blue]}
        steps:
          - id: one
            image: photo
            prompt: "Paint it {{ color }}"
          - id: two
            prompt: "Add a stripe{{ ' [[content-moderated]]' if color == 'blue' else '' }}"
          - id: three
            prompt: "Frame it"
        outputs: {final: three}
    """)
    server = bfl_server()
    result = kp.run(recipe, out=recipe.parent / "out", cache_dir=recipe.parent / "cache",
                    api_base=server.url, api_key=KEY)
    assert not result.ok
    assert [(f.variant, f.step, f.status) for f in result.failures] == [
        ("color=blue", "two", "failed"), ("color=blue", "three", "skipped")]
    assert result.failures[0].reason.startswith("Content Moderated")
    assert str(result.failures[0]).startswith("color=blue / two: Content Moderated")
    assert list(result.outputs) == ["color=red/final.png"]


@pytest.mark.parametrize(("options", "message"), [
    ({"provider": "nope", "frozen": True}, "unknown provider 'nope'; choose one of: bfl, "
                                           "preview"),
    ({"concurrency": 0}, "concurrency must be a whole number from 1 to 24; got 0"),
    ({"concurrency": True}, "concurrency must be a whole number from 1 to 24; got True"),
    ({"max_credits": -1}, "max_credits must be a number of credits (a fraction too), 0 or "
                          "more; got -1"),
    ({"max_credits": float("nan")}, "max_credits must be a number of credits (a fraction "
                                    "too), 0 or more; got nan"),
    ({"max_credits": "8"}, "max_credits must be a number of credits (a fraction too), 0 or "
                           "more; got '8'"),
    ({"vars": {"color": None}}, "vars['color'] must be text, a number or a boolean; got "
                                "NoneType"),
    ({"vars": {"colour": "red"}}, f"--var colour: {CHAIN} has no variable 'colour' (did you "
                                  "mean 'color'?); declare it under `vars`"),
])
def test_bad_arguments_raise_a_usage_error_that_names_them(
        options: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(kp.UsageError) as caught:
        kp.run(CHAIN, out=tmp_path / "out", cache_dir=tmp_path / "cache",
               **{"provider": "preview", **options})
    assert str(caught.value) == message
