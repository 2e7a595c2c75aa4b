"""What the tool prints never acts on the terminal: rich markup in a prompt or an API's answer
is shown as text (it once ended a run with ``MarkupError``, losing a finished result), and
control, bidi and zero-width characters from recipes, images and API answers are shown as
escapes, on stdout, stderr, the live display and in ``--json`` output (which stays valid JSON).
Ordinary non-ASCII text stays as it is.
"""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from PIL import Image
from rich.console import Console

from kontext_pipeline._support.text import printable, printable_json
from kontext_pipeline.cli import cli
from kontext_pipeline.cli._progress import LiveProgress
from kontext_pipeline.outputs._provenance import Provenance, encode_provenance, insert_provenance
from kontext_pipeline.plan._plan import build_plan
from kontext_pipeline.recipe._spec import load_spec
from kontext_pipeline.runner._pipelines import PipelineReport, run_pipelines
from kontext_pipeline.server._run import BackgroundServer
from kontext_pipeline.server._state import TaskRecord
from kontext_pipeline.store._cache import Cache
from tests.bfl_helpers import KEY, png, provider_for
from tests.conftest import Start

HOSTILE = "[/b] [bold red]red \x1b]0;pwned\x07 \x1b[2J \u202e é 日本 🎉"
SHOWN = "[/b] [bold red]red \\x1b]0;pwned\\x07 \\x1b[2J \\u202e é 日本 🎉"
RAW = ("\x1b]0;pwned", "\x1b[2J", "\u202e")  # what must never reach the terminal as it is

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def assert_clean(text: str) -> None:
    """Nothing of HOSTILE reached the output as it is, and no traceback did."""
    for raw in RAW:
        assert raw not in text
    assert "Traceback" not in text


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env={"BFL_API_KEY": KEY},
                              prog_name="kontext-pipeline", catch_exceptions=False)


def write_recipe(folder: Path, prompt: str, *, other: str = "Make it green") -> Path:
    """A recipe of two steps on ``photo.png``: ``edit`` (exported) with ``prompt``, and
    ``other``."""
    Image.new("RGB", (32, 24), (30, 120, 200)).save(folder / "photo.png")
    path = folder / "recipe.yaml"
    path.write_text(
        "version: 1\nname: hostile\ninputs:\n  photo: photo.png\nsteps:\n"
        f"  - id: edit\n    image: photo\n    prompt: {json.dumps(prompt, ensure_ascii=False)}\n"
        f"  - id: other\n    image: photo\n    prompt: {json.dumps(other)}\n"
        "outputs:\n  result: edit\n", encoding="utf-8")
    return path


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- the escaping itself ----------------------------------------------------------------------

@pytest.mark.parametrize(("text", "shown"), [
    (HOSTILE, SHOWN),
    ("tab\tfeed\ncarriage\rdel\x7fcsi\x9bnul\x00",
     "tab\\tfeed\\ncarriage\\rdel\\x7fcsi\\x9bnul\\x00"),
    ("zero\u200bwidth\u200d rtl\u200f iso\u2066\u2069 bom\ufeff ls\u2028",
     "zero\\u200bwidth\\u200d rtl\\u200f iso\\u2066\\u2069 bom\\ufeff ls\\u2028"),
    ("undecodable \udcff name", "undecodable \\udcff name"),
    ("soft\xadhyphen alm\u061c mvs\u180e wj\u2060 op\u2064",
     "soft\\xadhyphen alm\\u061c mvs\\u180e wj\\u2060 op\\u2064"),
    ("café 日本語 🎉 «guillemets» — ü", "café 日本語 🎉 «guillemets» — ü"),
])
def test_control_and_invisible_characters_are_shown_as_escapes(text: str, shown: str) -> None:
    assert printable(text) == shown
    assert printable(shown) == shown  # escaping twice changes nothing


def test_line_feeds_the_tool_lays_out_can_stay() -> None:
    assert printable("one\ntwo\x1b[2J\r", newlines=True) == "one\ntwo\\x1b[2J\\r"


def test_json_stays_valid_and_means_the_same() -> None:
    document = {"prompt": HOSTILE + "\x7f\x9b\u200b\udcff\n\t", "n": [1, None]}
    text = printable_json(json.dumps(document, indent=2, ensure_ascii=False))
    assert json.loads(text) == document
    assert_clean(text)
    assert "é 日本 🎉" in text
    assert text.startswith('{\n  "prompt": "[/b] [bold red]red \\u001b]0;pwned\\u0007 ')


# --- recipes: plan, run, inspect ---------------------------------------------------------------

def test_plan_shows_a_hostile_prompt_escaped(work: Path) -> None:
    write_recipe(work, HOSTILE)
    result = invoke("plan", "recipe.yaml", "--provider", "preview", "--cache-dir", "cache")
    assert result.exit_code == EXIT_OK
    assert f"\n       {SHOWN}\n" in result.stdout
    assert_clean(result.output)
    as_json = invoke("plan", "recipe.yaml", "--provider", "preview", "--cache-dir", "cache",
                     "--json")
    assert as_json.exit_code == EXIT_OK
    assert json.loads(as_json.stdout)["tasks"][0]["prompt"] == HOSTILE
    assert_clean(as_json.stdout)


def test_a_run_logs_a_hostile_prompt_escaped_and_keeps_its_results(work: Path) -> None:
    write_recipe(work, "Make it blue")
    assert invoke("run", "recipe.yaml", "--provider", "preview", "--cache-dir", "cache",
                  "--out", "out").exit_code == EXIT_OK
    write_recipe(work, HOSTILE)
    result = invoke("run", "recipe.yaml", "--provider", "preview", "--cache-dir", "cache",
                    "--out", "out")
    assert result.exit_code == EXIT_OK
    assert result.stderr.splitlines()[:2] == [
        "run: 2 steps: 1 cached, 1 to run, free (would cost 4 credits ($0.04) on BFL)",
        f"hostile/default/edit: runs: prompt: [-Make it blue-]{{+{SHOWN}+}}"]
    assert_clean(result.output)
    assert (work / "out" / "result.png").is_file()


def test_the_live_display_shows_a_hostile_prompt_escaped(work: Path) -> None:
    """``run`` with stderr on a terminal (a pseudo-terminal): the live display."""
    write_recipe(work, "Make it blue")
    assert invoke("run", "recipe.yaml", "--provider", "preview", "--cache-dir", "cache",
                  "--out", "out").exit_code == EXIT_OK
    write_recipe(work, HOSTILE)
    code, stdout, stderr = run_on_a_terminal(
        "run", "recipe.yaml", "--provider", "preview", "--cache-dir", "cache", "--out", "out")
    assert code == EXIT_OK, stderr
    assert stdout.startswith("hostile: 2 steps, 1 cached, 1 made, ")
    assert f"hostile/default/edit: runs: prompt: [-Make it blue-]{{+{SHOWN}+}}" in stderr
    assert_clean(stderr)
    assert (work / "out" / "result.png").is_file()


def run_on_a_terminal(*args: str) -> tuple[int, str, str]:
    """The command line in a process of its own with stderr on a pseudo-terminal: its exit
    code, stdout, and what the terminal received."""
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "200"}
    env.pop("NO_COLOR", None)
    main, other = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "kontext_pipeline", *args],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=other,
                               env=env)
    os.close(other)
    received = bytearray()
    deadline = time.monotonic() + 120  # a bound against a hang, not a timing expectation
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 1.0)
            if not ready:
                continue
            try:
                data = os.read(main, 65536)
            except OSError:  # Linux: the other end is closed
                break
            if not data:
                break
            received += data
        assert process.stdout is not None
        stdout = process.stdout.read().decode()
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
        os.close(main)
    return code, stdout, received.decode()


def hostile_png() -> bytes:
    """An image whose provenance fields hold markup and control characters."""
    provenance = Provenance(recipe=HOSTILE, variant="v\x1b[2J", step="s\u202e", model="m",
                            seed=7, provider="p\x07", cache_key="k" * 64, prompt=HOSTILE)
    return insert_provenance(png(), encode_provenance(provenance, "png"))


def test_inspect_shows_hostile_provenance_escaped(work: Path) -> None:
    (work / "hostile.png").write_bytes(hostile_png())
    result = invoke("inspect", "hostile.png")
    assert result.exit_code == EXIT_OK
    lines = result.stdout.splitlines()
    assert lines[1:4] == [f"recipe:        {SHOWN}", "variant:       v\\x1b[2J",
                          "step:          s\\u202e"]
    assert lines[6] == "provider:      p\\x07"
    assert lines[-1] == f"prompt:        {SHOWN}"
    assert_clean(result.output)
    as_json = invoke("inspect", "hostile.png", "--json")
    assert as_json.exit_code == EXIT_OK
    found = json.loads(as_json.stdout)
    assert (found["prompt"], found["variant"], found["step"]) == (HOSTILE, "v\x1b[2J", "s\u202e")
    assert_clean(as_json.stdout)


def test_cache_ls_shows_a_hostile_prompt_escaped(work: Path) -> None:
    write_recipe(work, HOSTILE)
    assert invoke("run", "recipe.yaml", "--provider", "preview", "--cache-dir", "cache",
                  "--out", "out").exit_code == EXIT_OK
    result = invoke("cache", "ls", "--cache-dir", "cache")
    assert result.exit_code == EXIT_OK
    assert sorted(line.endswith(f" h  {SHOWN}") for line in result.stdout.splitlines()) == [
        False, True]  # the other step's prompt is plain
    assert_clean(result.output)


def test_a_problem_in_a_recipe_stays_one_line_with_its_text_escaped(work: Path) -> None:
    (work / "recipe.yaml").write_text('version: 1\nname: hostile\nsteps:\n'
                                      '  - id: "a\\nb\\e[2J"\n    prompt: x\n')
    result = invoke("validate", "recipe.yaml")
    assert result.exit_code == EXIT_INVALID
    assert result.stderr == (
        "recipe.yaml:4:9: steps[0] (id: a\\nb\\x1b[2J): id: \"a\\nb\\u001b[2J\" is not a name "
        "of letters, digits, '_' and '-', starting with a letter or '_'\n"
        "kontext-pipeline: 1 problem in recipe.yaml\n")


def test_an_error_message_shows_a_hostile_path_escaped(work: Path) -> None:
    (work / "hostile\x1b[2J.png").write_bytes(b"not an image")
    result = invoke("inspect", "hostile\x1b[2J.png")
    assert result.exit_code == EXIT_INVALID
    assert result.stderr == ("kontext-pipeline: hostile\\x1b[2J.png is not a PNG or JPEG "
                             "image\n")
    assert result.stdout == ""
    assert_clean(result.output)


# --- the API's answers -------------------------------------------------------------------------

class FailingWith(dict[str, TaskRecord]):
    """The bundled server's tasks, where a task whose prompt asks for ``[[error]]`` fails with
    ``detail`` as the reason its answer gives."""

    def __init__(self, detail: str) -> None:
        super().__init__()
        self.detail = detail

    def __setitem__(self, key: str, task: TaskRecord) -> None:
        if "[[error]]" in task.prompt:
            task.details = {"error": self.detail}
        super().__setitem__(key, task)


DETAIL = HOSTILE + "\nkontext-pipeline: all good"
DETAIL_SHOWN = SHOWN + "\\nkontext-pipeline: all good"


def test_a_hostile_failure_detail_is_shown_escaped_and_the_rest_is_kept(
        work: Path, bfl_server: Start) -> None:
    server = bfl_server()
    server.state.tasks = FailingWith(DETAIL)
    write_recipe(work, "Make it blue", other="Make it red [[error]]")
    result = invoke("run", "recipe.yaml", "--api-base", server.url, "--cache-dir", "cache",
                    "--out", "out")
    assert result.exit_code == EXIT_FAILED
    (task,) = [t.id for t in server.state.tasks.values() if t.outcome == "Error"]
    why = (f"the task ended with status 'Error' (task {task}, prompt: 'Make it red [[error]]') "
           f"({DETAIL_SHOWN})")
    assert f"hostile/default/other: failed: hostile/default/other: {why}\n" in result.stderr
    assert result.stderr.endswith(f"kontext-pipeline: 1 step failed:\n"
                                  f"  hostile / default / other: {why}\n")
    assert_clean(result.output)
    assert (work / "out" / "result.png").is_file()


def test_a_hostile_status_word_is_shown_escaped(
        work: Path, bfl_server: Start) -> None:
    server = bfl_server(unknown_status=HOSTILE)
    write_recipe(work, "Make it blue")
    result = invoke("run", "recipe.yaml", "--api-base", server.url, "--cache-dir", "cache",
                    "--out", "out")
    assert result.exit_code == EXIT_OK
    assert (f"warning: the API answered status '{SHOWN}', which this client does not know; "
            "the task is taken to be still in flight") in result.stderr
    assert_clean(result.output)
    assert (work / "out" / "result.png").is_file()


def run_live(work: Path, server: BackgroundServer) -> tuple[list[PipelineReport], str]:
    """Run ``work/recipe.yaml`` against ``server`` with the live display on a terminal
    console; the reports and what the terminal received."""
    console = Console(file=io.StringIO(), force_terminal=True, width=200)
    display = LiveProgress(console)
    plan = build_plan(load_spec(work / "recipe.yaml"), overrides={}, env={}, provider="bfl")
    try:
        reports = run_pipelines([plan], cache=Cache(work / "cache"), out_dirs=[work / "out"],
                                open_provider=lambda: provider_for(server),
                                on_start=display.start, on_event=display.event,
                                on_note=display.note)
    finally:
        display.close()
    assert isinstance(console.file, io.StringIO)
    return reports, console.file.getvalue()


def test_the_live_display_shows_hostile_answers_escaped_and_keeps_the_results(
        work: Path, bfl_server: Start) -> None:
    server = bfl_server(unknown_status=HOSTILE)
    server.state.tasks = FailingWith(DETAIL)
    write_recipe(work, "Make it blue [/b]", other="Make it red [/b] [[error]]")
    reports, terminal = run_live(work, server)
    (task,) = [t.id for t in server.state.tasks.values() if t.outcome == "Error"]
    assert [line for report in reports for line in report.failures] == [
        f"hostile / default / other: the task ended with status 'Error' (task {task}, prompt: "
        f"'Make it red [/b] [[error]]') ({DETAIL})"]
    assert_clean(terminal)
    flat = " ".join(re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal).split())  # as shown
    assert re.search(r"warning hostile/default/(edit|other): the API answered status "  # one
                     f"'{re.escape(SHOWN)}'", flat)  # warning a word, for the first to poll
    assert (f"failed hostile/default/other: hostile/default/other: the task ended with status "
            f"'Error' (task {task}, prompt: 'Make it red [/b] [[error]]') "
            f"({' '.join(DETAIL_SHOWN.split())})") in flat
    assert (work / "out" / "result.png").is_file()
