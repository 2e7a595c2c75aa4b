"""Runs with the preview provider as a user makes them: the README's recipe, the cache
commands, Ctrl-C, and two runs sharing one cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from click.testing import Result

from kontext_pipeline.runner._pipelines import RunStart
from tests.conftest import PIPELINES, RunCli


def cli(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "kontext_pipeline", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# A shell starts a background job with SIGINT ignored, and a child inherits that: were the suite
# itself started so (`pytest &` in a script), a run would rightly ignore the Ctrl-C this test
# sends. The run is started as from a terminal, with Python's own SIGINT handler.
_AS_FROM_A_TERMINAL = ("import runpy, signal, sys; "
                       "signal.signal(signal.SIGINT, signal.default_int_handler); "
                       "sys.argv[0] = 'kontext-pipeline'; "
                       "runpy.run_module('kontext_pipeline', run_name='__main__')")


def test_every_bundled_recipe_runs_with_the_preview_provider(run_cli: RunCli,
                                                              tmp_path: Path) -> None:
    for recipe in sorted(PIPELINES.glob("*.yaml")):
        out = tmp_path / "out" / recipe.stem
        result = run_cli("run", str(recipe), "--provider", "preview", "--cache-dir",
                         str(tmp_path / "cache"), "--out", str(out))
        assert result.exit_code == 0, result.output
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["provider"] == "preview"
        assert all(step["status"] == "done" for step in manifest["steps"])
        exported = [s["output"] for s in manifest["steps"] if s["output"]]
        assert exported
        assert all((out / path).is_file() for path in exported)


def test_cache_info_ls_gc_and_clear(run_cli: RunCli, tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    recipe = str(PIPELINES / "poster-chain.yaml")
    assert run_cli("run", recipe, "--provider", "preview", "--cache-dir", cache, "--out",
                   str(tmp_path / "out")).exit_code == 0
    info = run_cli("cache", "info", "--cache-dir", cache)
    assert info.stdout.splitlines()[:2] == [f"directory: {cache}", "entries:   3"]
    listing = run_cli("cache", "ls", "--cache-dir", cache).stdout.splitlines()
    assert len(listing) == 3
    assert all("preview  flux-kontext-" in line for line in listing)
    kept = run_cli("cache", "gc", recipe, "--provider", "preview", "--cache-dir", cache)
    assert kept.stdout == "removed 0 entries\n"
    changed = run_cli("cache", "gc", recipe, "--var", "color=green", "--provider", "preview",
                      "--cache-dir", cache)
    assert changed.stdout == "removed 3 entries\n"
    assert run_cli("cache", "gc", "--cache-dir", cache).exit_code == 2
    refused = run_cli("cache", "clear", "--cache-dir", cache)
    assert refused.exit_code == 1  # no confirmation on empty input: aborted
    assert run_cli("cache", "clear", "--yes", "--cache-dir", cache).exit_code == 0


def test_ctrl_c_stops_cleanly_and_keeps_what_finished(tmp_path: Path) -> None:
    recipe = tmp_path / "slow.yaml"
    recipe.write_text(
        "version: 1\nname: slow\nmatrix:\n  n: [1, 2, 3]\nsteps:\n"
        "  - {id: quick, prompt: 'Quick {{ n }}'}\n"
        "  - {id: stuck, prompt: 'Never ends {{ n }} [[never]]'}\n")
    process = subprocess.Popen(
        [sys.executable, "-c", _AS_FROM_A_TERMINAL, "run", str(recipe), "--provider", "preview",
         "--cache-dir", str(tmp_path / "cache")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        objects = tmp_path / "cache" / "v1" / "entries"
        while len(list(objects.glob("*/*.json"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:  # a run that did not stop is not left behind to trouble the tests after this one
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130
    assert stderr.splitlines()[-1] == "kontext-pipeline: interrupted"
    assert "Traceback" not in stderr
    assert len(list(objects.glob("*/*.json"))) == 3  # the three quick steps stay cached


def test_two_runs_sharing_one_cache_corrupt_nothing(run_cli: RunCli, tmp_path: Path) -> None:
    recipe = str(PIPELINES / "color-matrix.yaml")
    runs = [cli("run", recipe, "--provider", "preview", "--cache-dir", str(tmp_path / "cache"),
                "--out", str(tmp_path / f"out{i}"), "--json", cwd=tmp_path) for i in range(2)]
    manifests = []
    for process in runs:
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
        manifests.append(json.loads(stdout))
    outputs = [[s["output_sha256"] for s in m["steps"]] for m in manifests]
    assert outputs[0] == outputs[1]
    verify = run_cli("cache", "verify", "--cache-dir", str(tmp_path / "cache"))
    assert verify.stdout == "cache ok\n"
    for name in ("color=red,finish=glossy/car.jpg", "color=black,finish=chrome/car.jpg"):
        assert (tmp_path / "out0" / name).read_bytes() == (tmp_path / "out1" / name).read_bytes()


def test_run_start_describes_the_cost() -> None:
    assert RunStart(6, 2, 24).describe() == ("6 steps: 2 cached, 4 to run, expected cost 24 "
                                             "credits ($0.24)")


TINT = """\
version: 1
name: tint
matrix:
  color: [red, blue, gold]
steps:
  - {id: paint, prompt: "Paint it {{ color }}"}
  - {id: frame, prompt: "Frame the {{ color }} one", output_format: jpeg}
outputs:
  poster: frame
"""


class Tint:
    """``run --provider preview`` of :data:`TINT` into one ``--out`` with one cache."""

    def __init__(self, run_cli: RunCli, tmp_path: Path) -> None:
        self.run_cli, self.recipe = run_cli, tmp_path / "tint.yaml"
        self.recipe.write_text(TINT)
        self.cache, self.out = tmp_path / "cache", tmp_path / "out"

    def __call__(self, *args: str) -> Result:
        result = self.run_cli("run", str(self.recipe), "--provider", "preview", "--cache-dir",
                              str(self.cache), "--out", str(self.out), *args)
        assert result.exit_code == 0, result.output
        return result

    def files(self) -> list[str]:
        return sorted(str(p.relative_to(self.out)) for p in self.out.rglob("*"))

    def manifest(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads((self.out / "manifest.json").read_text())
        return document


def test_a_preview_run_says_it_is_free_and_names_its_report(run_cli: RunCli,
                                                             tmp_path: Path) -> None:
    tint = Tint(run_cli, tmp_path)
    planned = run_cli("plan", str(tint.recipe), "--provider", "preview", "--cache-dir",
                      str(tint.cache))
    assert planned.stdout.splitlines()[-1] == ("0 of 6 cached; the rest are free (would cost 24 "
                                               "credits ($0.24) on BFL)")
    first = tint()
    assert first.stderr.splitlines()[0] == ("run: 6 steps: 0 cached, 6 to run, free (would cost "
                                            "24 credits ($0.24) on BFL)")
    assert first.stdout == (f"tint: 6 steps, 0 cached, 6 made, free (would cost 24 credits on "
                            f"BFL) -> {tint.out / 'manifest.json'}, {tint.out / 'report.html'}\n")
    assert (tint.out / "report.html").is_file()
    again = tint()
    assert again.stderr == "run: 6 steps: 6 cached, 0 to run, free\n"
    assert again.stdout == (f"tint: 6 steps, 6 cached, 0 made, free -> "
                            f"{tint.out / 'manifest.json'}, {tint.out / 'report.html'}\n")


def test_a_run_of_fewer_variants_removes_the_others_exports(run_cli: RunCli,
                                                             tmp_path: Path) -> None:
    tint = Tint(run_cli, tmp_path)
    tint()
    assert [f for f in tint.files() if f.endswith(".jpg")] == [
        "color=blue/poster.jpg", "color=gold/poster.jpg", "color=red/poster.jpg"]
    narrowed = tint("--var", "color=gold")
    assert "warning" not in narrowed.stderr
    assert tint.files() == [".kontext-export.json", "color=gold", "color=gold/poster.jpg",
                            "manifest.json", "report.html", "steps", "steps/color=gold",
                            "steps/color=gold/paint.png"]
    assert [s["output"] for s in tint.manifest()["steps"]] == [None, "color=gold/poster.jpg"]
    widened = tint()  # and back: the others are exported again, from the cache
    assert widened.stdout.startswith("tint: 6 steps, 6 cached, 0 made, free -> ")
    assert len([f for f in tint.files() if f.endswith(".jpg")]) == 3


def test_an_edited_or_added_file_is_kept_with_a_warning(run_cli: RunCli,
                                                        tmp_path: Path) -> None:
    tint = Tint(run_cli, tmp_path)
    tint()
    red, blue = tint.out / "color=red", tint.out / "color=blue"
    with (red / "poster.jpg").open("ab") as poster:
        poster.write(b"touched up")
    (blue / "notes.txt").write_text("keep me")
    narrowed = tint("--var", "color=gold")
    assert narrowed.stderr.splitlines()[-2:] == [
        f"warning: kept {red / 'poster.jpg'}: it is not as the last run exported it, and this "
        "run no longer exports it",
        f"warning: kept {blue / 'notes.txt'}: the last run did not export it, and this run "
        "exports nothing to its folder"]
    assert tint.files() == [".kontext-export.json", "color=blue", "color=blue/notes.txt",
                            "color=gold", "color=gold/poster.jpg", "color=red",
                            "color=red/poster.jpg", "manifest.json", "report.html", "steps",
                            "steps/color=gold", "steps/color=gold/paint.png"]
    assert (red / "poster.jpg").read_bytes().endswith(b"touched up")
    assert "warning" not in tint("--var", "color=gold").stderr  # said once


def test_a_manifest_from_before_file_hashes_still_lets_exports_be_removed(
        run_cli: RunCli, tmp_path: Path) -> None:
    tint = Tint(run_cli, tmp_path)
    tint()
    older = tint.manifest()  # as an older version wrote it: no output_file_sha256 anywhere
    for step in older["steps"]:
        del step["output_file_sha256"]
    (tint.out / "manifest.json").write_text(json.dumps(older))
    state_path = tint.out / ".kontext-export.json"
    state = json.loads(state_path.read_text())
    state_path.write_text(json.dumps({path: entry[:3] for path, entry in state.items()}))
    with (tint.out / "color=red" / "poster.jpg").open("ab") as poster:
        poster.write(b"touched up")
    narrowed = tint("--var", "color=gold")
    assert narrowed.stderr.splitlines()[-1] == (
        f"warning: kept {tint.out / 'color=red' / 'poster.jpg'}: it is not as the last run "
        "exported it, and this run no longer exports it")
    assert [f for f in tint.files() if f.endswith(".jpg")] == ["color=gold/poster.jpg",
                                                               "color=red/poster.jpg"]


def test_another_recipes_exports_in_the_same_out_are_left_alone(run_cli: RunCli,
                                                                tmp_path: Path) -> None:
    tint = Tint(run_cli, tmp_path)
    tint()
    other = tmp_path / "other.yaml"
    other.write_text(TINT.replace("name: tint", "name: other"))
    result = run_cli("run", str(other), "--var", "color=gold", "--provider", "preview",
                     "--cache-dir", str(tint.cache), "--out", str(tint.out))
    assert result.exit_code == 0, result.output
    assert len([f for f in tint.files() if f.endswith(".jpg")]) == 3
