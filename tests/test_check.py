"""``kontext-pipeline check``: the recipe, its lock and the files the lock lists agree; no key,
no cache, no network. Runs go to the bundled server as the ``bfl`` provider (the one whose runs
write locks); each check after them runs with the cache deleted and no key."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import Result
from PIL import Image

import kontext_pipeline as kp
from kontext_pipeline.server._run import BackgroundServer
from tests.bfl_helpers import KEY
from tests.conftest import RunCli, Start

RECIPE = """
    version: 1
    name: checked
    inputs: {street: street.png}
    vars: {light: golden hour}
    steps:
      - id: recolor
        image: street
        prompt: Change the car's color to red, keep everything else unchanged
      - id: sign
        prompt: Replace 'OPEN' with 'CLOSED' on the sign
        seed: 7
      - id: relight
        prompt: Relight the scene as {{ light }}
    outputs:
      poster: relight
"""

HEADLINE = ("kontext-pipeline: {} from the lock (run the recipe to bring the lock and its files "
            "up to date, or undo the change):\n")
MATCHES = "recipe.yaml: 3 steps and 3 files match the lock\n"


class Project:
    """A recipe in a folder of its own (the current directory), run against one server."""

    def __init__(self, run_cli: RunCli, server: BackgroundServer, root: Path) -> None:
        self.run_cli, self.server, self.root = run_cli, server, root
        self.recipe = root / "recipe.yaml"
        self.lock = root / "recipe.lock"
        self.cache = root / "cache"
        Image.new("RGB", (32, 24), (30, 120, 200)).save(root / "street.png")
        self.write(RECIPE)

    def write(self, text: str) -> None:
        self.recipe.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")

    def edit(self, old: str, new: str) -> None:
        text = self.recipe.read_text(encoding="utf-8")
        assert old in text
        self.recipe.write_text(text.replace(old, new), encoding="utf-8")

    def run(self, *args: str) -> None:
        result = self.run_cli("run", "recipe.yaml", "--provider", "bfl", "--api-base",
                              self.server.url, "--cache-dir", str(self.cache), "--out", "out",
                              *args, env={"BFL_API_KEY": KEY})
        assert result.exit_code == 0, result.output
        assert self.lock.is_file()

    def check(self, *args: str) -> Result:
        """``check`` with no key, and a cache directory that is a file: it must use neither."""
        shutil.rmtree(self.cache, ignore_errors=True)
        self.cache.write_text("not a cache directory")
        return self.run_cli("check", *args, env={"BFL_API_KEY": None,
                                                 "KONTEXT_CACHE_DIR": str(self.cache)})


@pytest.fixture
def project(run_cli: RunCli, bfl_server: Start, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Project:
    monkeypatch.chdir(tmp_path)
    return Project(run_cli, bfl_server(latency=0.01), tmp_path)


def mismatch(result: Result, *lines: str) -> None:
    """``result`` is exit 3 with exactly these difference lines."""
    assert (result.exit_code, result.stdout) == (3, ""), result.output
    count = f"{len(lines)} difference{'' if len(lines) == 1 else 's'}"
    assert result.stderr == HEADLINE.format(count) + "".join(f"  {line}\n" for line in lines)


def test_after_a_run_check_passes_with_no_cache_and_no_key(project: Project) -> None:
    project.run()
    result = project.check("recipe.yaml")
    assert (result.exit_code, result.stdout, result.stderr) == (0, MATCHES, "")


def test_check_opens_no_cache_and_imports_no_http_client(project: Project) -> None:
    project.run()
    shutil.rmtree(project.cache)
    project.cache.mkdir()
    (project.cache / "v1").mkdir()
    probe = textwrap.dedent("""
        import os, sys
        cache = os.path.realpath(sys.argv[1])
        touched = []
        def watch(event, args):
            if event in ("open", "os.listdir", "os.scandir", "os.mkdir", "os.chmod",
                         "os.remove", "os.rename") and args and isinstance(args[0], (str, bytes)):
                path = os.fsdecode(args[0])
                if os.path.realpath(path).startswith(cache):
                    touched.append(f"{event} {path}")
        sys.addaudithook(watch)
        from kontext_pipeline.cli import cli
        try:
            cli(["check", "recipe.yaml"], prog_name="kontext-pipeline")
        except SystemExit as exit:
            print("exit", exit.code, "touched", touched, "httpx", "httpx" in sys.modules)
    """)
    env = {k: v for k, v in os.environ.items() if k != "BFL_API_KEY"}
    env["KONTEXT_CACHE_DIR"] = str(project.cache)
    done = subprocess.run([sys.executable, "-c", probe, str(project.cache)], cwd=project.root,
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.stdout == MATCHES + "exit 0 touched [] httpx False\n", done.stderr


@pytest.mark.parametrize(("change", "lines"), [
    ("edit", ["recipe.yaml: default / relight: file out/poster.png was edited (sha256 differs "
              "from the lock)"]),
    ("delete", ["recipe.yaml: default / sign: file out/steps/sign.png is missing"]),
    ("link", ["recipe.yaml: default / relight: file out/poster.png is a symbolic link; only a "
              "regular file is trusted"]),
])
def test_an_exported_file_edited_deleted_or_replaced_is_named(
        project: Project, change: str, lines: list[str]) -> None:
    project.run()
    poster, sign = project.root / "out" / "poster.png", project.root / "out" / "steps" / "sign.png"
    if change == "edit":
        poster.write_bytes(poster.read_bytes() + b"\0")
    elif change == "delete":
        sign.unlink()
    else:
        shutil.copyfile(poster, project.root / "copy.png")
        poster.unlink()
        poster.symlink_to(project.root / "copy.png")  # the same bytes, but not the file itself
    mismatch(project.check("recipe.yaml"), *lines)


def test_a_changed_prompt_is_a_word_diff_and_the_steps_after_it_are_named(
        project: Project) -> None:
    project.run()
    project.edit("color to red", "color to blue")
    mismatch(project.check("recipe.yaml"),
             "recipe.yaml: default / recolor: prompt changed: … car's color to [-red,-]{+blue,+} "
             "keep everything else …",
             "recipe.yaml: default / sign: input from step 'recolor' changed",
             "recipe.yaml: default / relight: input from step 'sign' changed")


def test_a_changed_vars_default_names_the_prompt_it_changes(project: Project) -> None:
    project.run()
    project.edit("light: golden hour", "light: blue hour")
    mismatch(project.check("recipe.yaml"),
             "recipe.yaml: default / relight: prompt changed: … the scene as "
             "[-golden-]{+blue+} hour")
    result = project.check("recipe.yaml", "--var", "light=golden hour")
    assert (result.exit_code, result.stdout) == (0, MATCHES), result.output


def test_a_changed_input_image_is_named(project: Project) -> None:
    project.run()
    Image.new("RGB", (32, 24), (200, 40, 40)).save(project.root / "street.png")
    mismatch(project.check("recipe.yaml"),
             "recipe.yaml: default / recolor: input image 'street' changed",
             "recipe.yaml: default / sign: input from step 'recolor' changed",
             "recipe.yaml: default / relight: input from step 'sign' changed")


def test_a_changed_seed_model_or_parameter_is_named(project: Project) -> None:
    project.run()
    project.edit("    seed: 7\n", "    seed: 8\n    model: flux-kontext-max\n"
                                   "    aspect_ratio: \"16:9\"\n")
    mismatch(project.check("recipe.yaml"),
             "recipe.yaml: default / sign: model changed: flux-kontext-pro -> flux-kontext-max; "
             "seed changed: 7 -> 8; aspect_ratio changed: null -> \"16:9\"",
             "recipe.yaml: default / relight: input from step 'sign' changed")


def test_steps_added_and_removed_are_named(project: Project) -> None:
    project.run()
    project.edit("outputs:\n  poster: relight\n",
                 "  - {id: frame, prompt: Add a frame}\noutputs:\n  poster: relight\n")
    mismatch(project.check("recipe.yaml"),
             "recipe.yaml: default / frame: not in the lock (never run)")
    project.write(RECIPE.replace("      - id: relight\n        prompt: Relight the scene as "
                                 "{{ light }}\n", "").replace("poster: relight", "poster: sign"))
    mismatch(project.check("recipe.yaml"),  # sign's image is now the output, not exported
             "recipe.yaml: default / sign: output 'poster' is in no file the lock lists "
             "(poster.png); run the recipe to export it",
             "recipe.yaml: default / relight: in the lock, but no longer in the recipe")


def test_a_recipe_never_run_has_no_lock(project: Project) -> None:
    mismatch(project.check("recipe.yaml"),
             "recipe.yaml: no lock file (recipe.lock); run the recipe to write it")


def test_a_lock_that_cannot_be_read_is_exit_2(project: Project) -> None:
    project.run()
    text = project.lock.read_text(encoding="utf-8")
    project.lock.write_text(text.replace("    sign:\n", "<<<<<<< HEAD\n    sign:\n", 1),
                            encoding="utf-8")
    result = project.check("recipe.yaml")
    assert (result.exit_code, result.stdout) == (2, ""), result.output
    assert result.stderr.startswith("kontext-pipeline: recipe.lock:")
    assert result.stderr.endswith(
        "; resolve the conflict, or rewrite it with `kontext-pipeline run --frozen --relock "
        "recipe.yaml`, which reads both sides and keeps each record whose image the cache or "
        "the exported files hold\n")


def test_several_recipes_are_all_reported_and_the_worst_exit_code_wins(
        project: Project) -> None:
    project.run()
    shutil.copyfile(project.recipe, project.root / "other.yaml")  # never run: no lock
    (project.root / "broken.yaml").write_text("version: 1\nname: broken\nsteps: []\n",
                                              encoding="utf-8")
    result = project.check("recipe.yaml", "other.yaml")
    assert (result.exit_code, result.stdout) == (3, MATCHES)
    assert result.stderr == HEADLINE.format("1 difference") + (
        "  other.yaml: no lock file (other.lock); run the recipe to write it\n")
    result = project.check("broken.yaml", "other.yaml", "recipe.yaml")
    assert (result.exit_code, result.stdout) == (2, MATCHES)
    lines = result.stderr.splitlines()
    assert lines[:2] == [HEADLINE.format("1 difference").rstrip("\n"),
                         "  other.yaml: no lock file (other.lock); run the recipe to write it"]
    assert lines[2].startswith("broken.yaml:3:")
    assert lines[-1] == "kontext-pipeline: 1 problem in broken.yaml"


def test_json_lists_the_differences(project: Project) -> None:
    project.run()
    result = project.check("recipe.yaml", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"recipe": "recipe.yaml", "lock": "recipe.lock",
                                         "ok": True, "steps": 3, "files": 3, "differences": []}
    project.edit("seed: 7", "seed: 8")
    result = project.check("recipe.yaml", "--json")
    assert result.exit_code == 3
    document = json.loads(result.stdout)
    assert document["differences"] == [
        {"kind": "changed", "variant": "default", "step": "sign", "path": None,
         "reason": "seed changed: 7 -> 8",
         "changes": [{"field": "seed", "name": None, "old": 7, "new": 8}]},
        {"kind": "changed", "variant": "default", "step": "relight", "path": None,
         "reason": "input from step 'sign' changed",
         "changes": [{"field": "input step", "name": "sign",
                      "old": document["differences"][1]["changes"][0]["old"], "new": None}]}]


def test_a_matrix_checks_the_variants_selected(project: Project) -> None:
    project.write(RECIPE.replace("    vars: {light: golden hour}\n",
                                 "    vars: {light: golden hour}\n    matrix:\n"
                                 "      color: [red, blue]\n")
                  .replace("color to red", "color to {{ color }}"))
    project.run()
    result = project.check("recipe.yaml", "--var", "color=blue")
    assert (result.exit_code, result.stdout) == (0, "recipe.yaml: 3 steps and 3 files match "
                                                    "the lock\n"), result.output
    project.edit("[red, blue]", "[red, teal]")
    result = project.check("recipe.yaml", "--var", "color=red")  # blue's records: not planned
    assert (result.exit_code, result.stdout) == (0, "recipe.yaml: 3 steps and 3 files match "
                                                    "the lock\n"), result.output
    mismatch(project.check("recipe.yaml"),
             "recipe.yaml: color=teal / recolor: not in the lock (never run)",
             "recipe.yaml: color=teal / sign: not in the lock (never run)",
             "recipe.yaml: color=teal / relight: not in the lock (never run)",
             "recipe.yaml: color=blue / recolor: in the lock, but no longer in the recipe",
             "recipe.yaml: color=blue / sign: in the lock, but no longer in the recipe",
             "recipe.yaml: color=blue / relight: in the lock, but no longer in the recipe")


def test_the_python_api_says_the_same(project: Project) -> None:
    project.run()
    shutil.rmtree(project.cache)
    result = kp.check("recipe.yaml")
    assert (result.ok, result.steps, result.files, result.differences) == (True, 3, 3, ())
    assert isinstance(result, kp.CheckResult)
    result = kp.check(project.recipe, vars={"light": "dusk"})
    assert not result.ok
    (difference,) = result.differences
    assert (difference.kind, difference.variant, difference.step) == ("changed", "default",
                                                                      "relight")
    assert [(c.field, c.old, c.new) for c in difference.changes] == [
        ("prompt", "Relight the scene as golden hour", "Relight the scene as dusk")]
    with pytest.raises(kp.SpecError):
        kp.check(project.root / "missing.yaml")


def submitted(project: Project) -> int:
    """How many edits the server was asked to make."""
    return sum(project.server.state.submits.values())


def fresh_cache(project: Project) -> None:
    """No cache at all (``check`` left a file in its place)."""
    project.cache.unlink()


def test_a_run_without_the_cache_mends_a_deleted_intermediate_file(project: Project) -> None:
    project.run()
    (project.root / "out" / "steps" / "sign.png").unlink()
    mismatch(project.check("recipe.yaml"),
             "recipe.yaml: default / sign: file out/steps/sign.png is missing")
    fresh_cache(project)
    made = submitted(project)
    project.run()  # sign is held by the lock: nothing reads its image, so nothing is paid
    assert submitted(project) == made
    lock = kp.check("recipe.yaml")
    assert lock.ok, lock.differences
    result = project.check("recipe.yaml")
    assert (result.exit_code, result.stdout) == (
        0, "recipe.yaml: 3 steps and 2 files match the lock\n"), result.output
    assert "    sign:\n" in project.lock.read_text(encoding="utf-8")


def test_a_renamed_pipeline_keeps_its_records(project: Project) -> None:
    project.run()
    project.edit("name: checked", "name: renamed")
    mismatch(project.check("recipe.yaml"),
             "recipe.yaml: pipeline renamed: checked -> renamed; run to update the lock")
    fresh_cache(project)
    made = submitted(project)
    project.run()  # the name is in no key: every result is the lock's and its files'
    assert submitted(project) == made
    assert "\npipeline: renamed\n" in project.lock.read_text(encoding="utf-8")
    result = project.check("recipe.yaml")
    assert (result.exit_code, result.stdout) == (0, MATCHES), result.output


def test_a_fresh_checkout_removes_the_files_a_renamed_output_replaced(project: Project) -> None:
    project.run()
    out = project.root / "out"
    for made_by_the_run in ("manifest.json", "report.html", ".kontext-export.json"):
        (out / made_by_the_run).unlink()  # not committed: a fresh checkout has the lock alone
    shutil.rmtree(project.cache)
    project.edit("poster: relight", "cover: relight")
    mismatch(project.check("recipe.yaml"),
             "recipe.yaml: default / relight: output 'cover' is in no file the lock lists "
             "(cover.png); run the recipe to export it")
    project.cache.unlink()
    made = submitted(project)
    project.run()
    assert submitted(project) == made
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "cover.png", "steps/recolor.png", "steps/sign.png"]
    text = project.lock.read_text(encoding="utf-8")
    assert "path: out/cover.png" in text
    assert "poster" not in text
    result = project.check("recipe.yaml")
    assert (result.exit_code, result.stdout) == (0, MATCHES), result.output


def test_a_fresh_checkout_keeps_a_file_edited_since_the_lock(project: Project) -> None:
    project.run()
    out = project.root / "out"
    (out / "manifest.json").unlink()
    (out / ".kontext-export.json").unlink()
    poster = out / "poster.png"
    poster.write_bytes(poster.read_bytes() + b"\0")  # not as the lock records it: not ours
    project.edit("poster: relight", "cover: relight")
    result = project.run_cli("run", "recipe.yaml", "--provider", "bfl", "--api-base",
                             project.server.url, "--cache-dir", str(project.cache), "--out",
                             "out", env={"BFL_API_KEY": KEY})
    assert result.exit_code == 0, result.output
    assert poster.is_file()
    assert (out / "cover.png").is_file()
    assert ("warning: kept out/poster.png: it is not as the last run exported it, and this "
            "run no longer exports it") in result.stderr


def test_json_is_one_object_for_one_recipe_and_a_list_for_several(project: Project) -> None:
    project.run()
    (project.root / "broken.yaml").write_text("version: 1\nname: broken\nsteps: []\n",
                                              encoding="utf-8")
    result = project.check("recipe.yaml", "broken.yaml", "--json")
    assert result.exit_code == 2
    documents = json.loads(result.stdout)  # one could be checked: still a list
    assert [(d["recipe"], d["ok"]) for d in documents] == [("recipe.yaml", True)]
    result = project.check("broken.yaml", "--json")
    assert (result.exit_code, result.stdout) == (2, "")
    result = project.check("recipe.yaml", "recipe.yaml", "--json")
    assert [d["recipe"] for d in json.loads(result.stdout)] == ["recipe.yaml", "recipe.yaml"]
    assert json.loads(project.check("recipe.yaml", "--json").stdout)["recipe"] == "recipe.yaml"
