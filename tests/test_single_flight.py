"""Single flight across processes: two `kontext-pipeline run` processes sharing one cache never
submit one key twice. The second waits for the first's claim, then takes the result from the
cache, or collects the first's journalled task if the first was killed."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from kontext_pipeline.server._run import BackgroundServer
from kontext_pipeline.store._cache import Cache
from tests.bfl_helpers import KEY
from tests.conftest import Start, WriteRecipe, exported_images

TIMEOUT = 120  # seconds a run may take on a loaded machine before the test fails

RECIPE = """
    version: 1
    name: shared
    inputs: {photo: photo.png}
    matrix:
      color: [red, orange, yellow, green, blue, indigo, violet, black]
      finish: [matte, gloss]
    steps:
      - {id: paint, image: photo, prompt: "Paint the car {{ color }}, {{ finish }} finish"}
"""

# A `kontext-pipeline run` that has imported what a run needs, then waits for the file named by
# its first argument: two of them then start their runs at one moment.
AT_THE_SIGNAL = """
import sys, time
from pathlib import Path
import kontext_pipeline.runner._executor, kontext_pipeline.plan._plan
import kontext_pipeline.cli._progress, kontext_pipeline.providers.bfl
import kontext_pipeline.runner._pipelines, kontext_pipeline.recipe._spec
from kontext_pipeline.cli import cli
signal = Path(sys.argv[1])
while not signal.exists():
    time.sleep(0.002)
cli.main(sys.argv[2:], prog_name="kontext-pipeline")
"""

WAITING = "another run sharing the cache is making this image; waiting for it"


def run_args(recipe: Path, server: BackgroundServer, cache: Path, out: Path) -> list[str]:
    return ["run", str(recipe), "--api-base", server.url, "--cache-dir", str(cache), "--out",
            str(out)]


def start(*command: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, *command], env={**os.environ, "BFL_API_KEY": KEY},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        _, stderr = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        raise AssertionError(f"still running after {TIMEOUT} s:\n{stderr}") from None
    return process.returncode, stderr


def journal(cache: Path) -> list[Path]:
    return sorted((cache / "v1" / "journal").glob("*/*.json"))


def claims(cache: Path) -> list[Path]:
    return sorted((cache / "v1" / "journal").glob("*/*.lock"))


def reference_images(recipe: Path, bfl_server: Start, tmp_path: Path) -> dict[str, bytes]:
    """What one undisturbed run makes (on a server of its own)."""
    server = bfl_server()
    out = tmp_path / "out-reference"
    code, stderr = finish(start("-m", "kontext_pipeline",
                                *run_args(recipe, server, tmp_path / "cache-reference", out)))
    assert code == 0, stderr
    return exported_images(out)


def test_two_runs_started_together_on_one_cache_submit_each_key_once(
        bfl_server: Start, write_recipe: WriteRecipe) -> None:
    recipe = write_recipe(RECIPE)
    tmp_path = recipe.parent
    server = bfl_server(latency=1.0)
    cache, go = tmp_path / "cache", tmp_path / "go"
    runs = [start("-c", AT_THE_SIGNAL, str(go), *run_args(recipe, server, cache,
                                                          tmp_path / f"out-{n}"))
            for n in (1, 2)]
    go.touch()
    for code, stderr in [finish(process) for process in runs]:
        assert code == 0, stderr
        assert "Traceback" not in stderr

    assert sum(server.state.submits.values()) == 16  # the server accepted 16 submits…
    assert sorted(server.state.submits.values()) == [1] * 16  # …one for each key
    first, second = (exported_images(tmp_path / f"out-{n}") for n in (1, 2))
    assert len(first) == 16
    assert first == second
    assert first == reference_images(recipe, bfl_server, tmp_path)
    assert journal(cache) == []
    assert claims(cache) == []  # each claim's file goes with it


def test_the_second_run_collects_what_a_killed_first_run_had_submitted(
        bfl_server: Start, write_recipe: WriteRecipe) -> None:
    recipe = write_recipe(RECIPE)
    tmp_path = recipe.parent
    server = bfl_server(latency=3.0)
    cache = tmp_path / "cache"
    first = start("-m", "kontext_pipeline", *run_args(recipe, server, cache, tmp_path / "one"))
    deadline = time.monotonic() + TIMEOUT
    while (len(journal(cache)) + Cache(cache).stats().entries < 16
           and time.monotonic() < deadline and first.poll() is None):
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)  # every request accepted; it collects none of them now
    try:
        assert sum(server.state.submits.values()) == 16
        stored = Cache(cache).stats().entries  # (unless the machine is very slow: none)
        assert stored < 16
        second = start("-m", "kontext_pipeline", *run_args(recipe, server, cache,
                                                           tmp_path / "two"))
        lines = stderr_lines(second)
        seen: list[str] = []
        while not any(line.endswith(f": waiting: {WAITING}") for line in seen):
            line = lines.get(timeout=TIMEOUT)
            assert line is not None, "".join(seen)  # the second run ended without waiting
            seen.append(line.rstrip("\n"))
    finally:
        first.kill()  # its claims go with it
    assert finish(first)[0] == -signal.SIGKILL
    # the first run was alive (stopped) when the second started: its tasks were not interrupted
    (said,) = [line for line in seen if line.startswith("run: 16 steps: ")]
    assert " being made by another run, " in said
    assert "interrupted" not in said

    rest: list[str] = []
    while (line := lines.get(timeout=TIMEOUT)) is not None:
        rest.append(line.rstrip("\n"))
    with second:  # closes its pipes
        assert second.wait(timeout=TIMEOUT) == 0, "\n".join(seen + rest)
    assert sorted(server.state.submits.values()) == [1] * 16  # collected, not submitted again
    submitted = [line for line in seen + rest if ": submitted" in line]
    assert len(submitted) == 16 - stored
    assert all(" of an earlier run" in line for line in submitted), submitted
    assert journal(cache) == []
    assert claims(cache) == []
    assert exported_images(tmp_path / "two") == reference_images(recipe, bfl_server, tmp_path)


def stderr_lines(process: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """The process's standard error, line by line as it comes (None at its end)."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines
