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

from kontext_pipeline.runner import RunStart
from tests.conftest import PIPELINES, RunCli


def cli(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "kontext_pipeline", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


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
    process = cli("run", str(recipe), "--provider", "preview", "--cache-dir",
                  str(tmp_path / "cache"), cwd=tmp_path)
    deadline = time.monotonic() + 30
    objects = tmp_path / "cache" / "v1" / "entries"
    while len(list(objects.glob("*/*.json"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
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
