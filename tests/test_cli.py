"""The command line: outputs, exit codes, and a start-up that imports only what it needs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import PIPELINES, ROOT, RunCli, WriteRecipe

HEAVY = ("PIL", "httpx", "rich", "starlette", "uvicorn", "jsonschema", "jinja2", "yaml")


def imported_after(*args: str) -> list[str]:
    """Run the CLI in a fresh interpreter and list the heavy top-level modules it imported."""
    code = textwrap.dedent(f"""
        import sys
        from kontext_pipeline.cli import cli
        try:
            cli({list(args)!r}, prog_name="kontext-pipeline")
        except SystemExit:
            pass
        print(sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r})))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=ROOT)
    return list(json.loads(result.stdout.splitlines()[-1].replace("'", '"')))


def test_help_imports_nothing_heavy() -> None:
    assert imported_after("--help") == []
    assert imported_after("validate", "--help") == []


def test_validate_without_input_images_does_not_import_pillow() -> None:
    assert "PIL" not in imported_after("validate", "pipelines/text-to-image.yaml")
    assert "PIL" in imported_after("validate", "pipelines/poster-chain.yaml")
    assert "httpx" not in imported_after("validate", "pipelines/poster-chain.yaml")


def test_python_dash_m_and_version() -> None:
    result = subprocess.run([sys.executable, "-m", "kontext_pipeline", "--version"],
                            capture_output=True, text=True, check=True)
    assert result.stdout == "kontext-pipeline, version 0.1.0\n"


def test_dash_capital_v_is_version(run_cli: RunCli) -> None:
    result = run_cli("-V")
    assert result.exit_code == 0
    assert result.stdout == "kontext-pipeline, version 0.1.0\n"


def test_validate_ok(run_cli: RunCli) -> None:
    result = run_cli("validate", str(PIPELINES / "color-matrix.yaml"))
    assert result.exit_code == 0
    assert result.stdout == f"{PIPELINES / 'color-matrix.yaml'}: ok (2 steps, 6 variants, " \
                            "12 tasks)\n"
    assert result.stderr == ""


def test_warnings_pass_unless_strict(run_cli: RunCli, write_recipe: WriteRecipe) -> None:
    path = write_recipe("""
        version: 1
        name: warn
        inputs: {photo: photo.png}
        steps:
          - {id: a, prompt: one}
    """)
    warning = f"{path}:3:10: warning: inputs: input 'photo' is not used by any step"
    result = run_cli("validate", str(path))
    assert result.exit_code == 0
    assert result.stderr == warning + "\n"
    strict = run_cli("validate", "--strict", str(path))
    assert strict.exit_code == 2
    assert strict.stderr.splitlines() == [
        warning.replace(" warning:", ""),
        f"kontext-pipeline: 1 problem in {path}",
    ]


def test_plan_text(run_cli: RunCli, tmp_path: Path) -> None:
    # --out of its own: README command 1 leaves a manifest in the checkout's out/, and plan
    # would explain every step against it
    result = run_cli("plan", "pipelines/poster-chain.yaml", "--cache-dir", str(tmp_path),
                     "--out", str(tmp_path / "out"))
    assert result.exit_code == 0
    assert result.stdout == textwrap.dedent("""\
        poster-chain (pipelines/poster-chain.yaml)
        provider bfl · 1 variant × 3 steps = 3 tasks

        variant default
          1. recolor  flux-kontext-pro  seed 4110452625  image street  png · tolerance 2  miss  key 21920ac7a8f6  4 credits
               Change the car's color to blue, keep everything else unchanged
               lock: none
          2. sign     flux-kontext-pro  seed 7           image recolor  png · tolerance 2  miss (after recolor)  4 credits
               Replace 'OPEN DAILY' with 'CHOOSE JOY' on the shop sign, same font and colors
               lock: none
          3. relight  flux-kontext-max  seed 340273185   image sign  16:9 · png · tolerance 2  miss (after sign)  8 credits
               Relight the whole scene as golden hour, warm low sun from the left,
               keep the blue car and the sign text exactly as they are
               lock: none

        0 of 3 cached; the rest cost 16 credits ($0.16)
        lock pipelines/poster-chain.lock: none yet; a run writes it (3 steps)
    """)  # noqa: E501


def test_plan_json(run_cli: RunCli, tmp_path: Path) -> None:
    result = run_cli("plan", "--json", "--var", "color=teal", "--provider", "preview",
                     "--cache-dir", str(tmp_path), str(PIPELINES / "color-matrix.yaml"))
    assert result.exit_code == 0
    plan = json.loads(result.stdout)
    assert plan["pipeline"] == "color-matrix"
    assert plan["provider"] == "preview"
    assert [v["id"] for v in plan["variants"]] == [
        "color=teal,finish=glossy,sign=Teal Tuesday", "color=teal,finish=matte,sign=Teal Tuesday"]
    assert plan["totals"] == {"tasks": 4, "credits": 16, "cached": 0, "credits_to_spend": 16}
    first = plan["tasks"][0]
    assert first["step"] == "recolor"
    assert first["images"][0]["name"] == "street"
    assert first["images"][0]["source"] == "input"
    assert len(first["key"]) == 64
    assert plan["tasks"][1]["key"] is None
    assert {t["cache"] for t in plan["tasks"]} == {"miss"}
    assert plan["tasks"][1]["images"] == [{"name": "recolor", "source": "step", "sha256": None}]


def test_bad_var_syntax_is_a_usage_error(run_cli: RunCli) -> None:
    result = run_cli("plan", "--var", "color", "pipelines/poster-chain.yaml")
    assert result.exit_code == 2
    assert "Invalid value for --var: 'color' is not NAME=VALUE" in result.stderr


def test_an_empty_var_value_is_a_usage_error(run_cli: RunCli) -> None:
    for command in ("plan", "run"):
        for value in ("sign=", "sign=  "):
            result = run_cli(command, "--var", value, "--provider", "preview",
                             "pipelines/poster-chain.yaml")
            assert result.exit_code == 2
            assert result.stderr.splitlines()[-1] == (
                f"Error: Invalid value for --var: '{value}' has an empty value; write --var "
                "sign=VALUE, or leave --var sign out to keep the recipe's value")
            assert result.stdout == ""


def test_unknown_var_is_a_usage_error(run_cli: RunCli) -> None:
    result = run_cli("plan", "--var", "colour=red", "pipelines/poster-chain.yaml")
    assert result.exit_code == 2
    assert result.stderr == (
        "kontext-pipeline: --var colour: pipelines/poster-chain.yaml has no variable 'colour' "
        "(did you mean 'color'?); declare it under `vars`\n")
    assert result.stdout == ""


def test_run_reports_an_invalid_recipe(run_cli: RunCli) -> None:
    result = run_cli("run", "tests/recipes/invalid/wrong-version.yaml")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == (
        "tests/recipes/invalid/wrong-version.yaml:1:10: version: unsupported version 2; this "
        "kontext-pipeline reads version 1")


def test_missing_recipe(run_cli: RunCli) -> None:
    result = run_cli("validate", "no/such.yaml")
    assert result.exit_code == 2
    assert result.stderr == ("no/such.yaml: no such recipe file\n"
                             "kontext-pipeline: 1 problem in no/such.yaml\n")


def test_public_api_is_complete_and_lazy() -> None:
    code = ("import sys, kontext_pipeline as k; assert 'jinja2' not in sys.modules; "
            "print(all(getattr(k, n) for n in k.__all__))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout == "True\n"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("# 2. set up, then run the tests\n", 1)[1].split("\n", 1)[0]
    assert block.endswith(".venv/bin/python -m pytest")
    assert block in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
