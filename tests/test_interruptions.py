"""Runs that are killed mid-flight (SIGKILL, SIGTERM) and started again: the requests the API
had accepted are collected, not submitted again, and the outputs are those of a run that was
never interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.bfl_helpers import KEY
from tests.conftest import RunCli, Start, WriteRecipe, exported_images

RECIPE = """
    version: 1
    name: fragile
    inputs: {photo: photo.png}
    matrix:
      n: [1, 2, 3, 4]
    steps:
      - {id: first, image: photo, prompt: "Paint stripe number {{ n }}"}
      - {id: second, prompt: "Add {{ n }} stars"}
    outputs:
      first: first
      second: second
"""


def journal(cache: Path) -> list[Path]:
    return sorted((cache / "v1" / "journal").glob("*/*.json"))


@pytest.mark.parametrize(("stop", "code"), [(signal.SIGKILL, -9), (signal.SIGTERM, 130)])
def test_a_killed_run_started_again_collects_what_was_accepted(
        stop: signal.Signals, code: int, bfl_server: Start, run_cli: RunCli,
        write_recipe: WriteRecipe) -> None:
    recipe = write_recipe(RECIPE)
    tmp_path = recipe.parent
    server = bfl_server(latency=1.5)
    cache, out = tmp_path / "cache", tmp_path / "out"
    args = ["run", str(recipe), "--api-base", server.url, "--cache-dir", str(cache), "--out",
            str(out)]
    process = subprocess.Popen([sys.executable, "-m", "kontext_pipeline", *args],
                               env={**os.environ, "BFL_API_KEY": KEY}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(journal(cache)) < 4 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code
    assert "Traceback" not in stderr
    if stop == signal.SIGTERM:
        assert stderr.splitlines()[-1] == "kontext-pipeline: interrupted"
    accepted = sum(server.state.submits.values())
    assert accepted >= 4
    assert len(journal(cache)) == accepted  # every accepted request is on record
    assert not [path for path in journal(cache) if KEY.encode() in path.read_bytes()]
    assert not out.exists()

    again = run_cli(*args, env={"BFL_API_KEY": KEY})
    assert again.exit_code == 0, again.output
    assert "to collect from an interrupted run" in again.stderr
    assert sorted(server.state.submits.values()) == [1] * 8  # no request was submitted twice
    assert journal(cache) == []

    reference = bfl_server(latency=0.05)
    fresh = run_cli("run", str(recipe), "--api-base", reference.url, "--cache-dir",
                    str(tmp_path / "cache-ref"), "--out", str(tmp_path / "out-ref"),
                    env={"BFL_API_KEY": KEY})
    assert fresh.exit_code == 0, fresh.output
    assert exported_images(out) == exported_images(tmp_path / "out-ref")
    assert len(exported_images(out)) == 8
