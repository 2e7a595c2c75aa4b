"""`cache gc` never destroys a paid result behind anyone's back: it keeps what the recipes reach
under every provider, lists what it would remove with --dry-run, and asks before removing paid
(bfl) results (refusing where there is no terminal to ask, unless --yes)."""

from __future__ import annotations

import errno
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kontext_pipeline._support import files
from kontext_pipeline.store._cache import Cache
from tests.bfl_helpers import KEY
from tests.conftest import RunCli, Start, WriteRecipe

RECIPE = """
    version: 1
    name: doors
    inputs: {photo: photo.png}
    matrix:
      color: [red, blue]
    steps:
      - {id: paint, image: photo, prompt: "Paint the door {{ color }}"}
"""
DEPRECATED = ("kontext-pipeline: note: cache gc ignores --provider (deprecated): it keeps what "
              "the recipes reach under every provider\n")


@pytest.fixture
def both_providers(bfl_server: Start, run_cli: RunCli, write_recipe: WriteRecipe) -> Path:
    """The recipe, run with the preview provider and with bfl, into one cache (in ./cache)."""
    recipe = write_recipe(RECIPE)
    server = bfl_server()
    common = [str(recipe), "--cache-dir", str(recipe.parent / "cache")]
    preview = run_cli("run", *common, "--provider", "preview", "--out", str(recipe.parent / "p"))
    assert preview.exit_code == 0, preview.output
    paid = run_cli("run", *common, "--api-base", server.url, "--out", str(recipe.parent / "b"),
                   env={"BFL_API_KEY": KEY})
    assert paid.exit_code == 0, paid.output
    assert providers(recipe.parent / "cache") == ["bfl", "bfl", "preview", "preview"]
    return recipe


def providers(cache: Path) -> list[str]:
    return sorted(entry.provider for _, entry in Cache(cache).entries() if entry is not None)


def listed(cache: Path, color: str) -> list[str]:
    """How gc lists the entries of the ``color`` variant (as `cache ls` does)."""
    return [line for line in cache_ls(cache) if line.endswith(f"Paint the door {color}")]


def cache_ls(cache: Path) -> list[str]:
    done = subprocess.run([sys.executable, "-m", "kontext_pipeline", "cache", "ls",
                           "--cache-dir", str(cache)], capture_output=True, text=True, check=True)
    return done.stdout.splitlines()


def test_gc_keeps_what_the_recipe_reaches_under_every_provider(both_providers: Path,
                                                                run_cli: RunCli) -> None:
    cache = both_providers.parent / "cache"
    kept = run_cli("cache", "gc", str(both_providers), "--cache-dir", str(cache))
    assert (kept.exit_code, kept.stdout) == (0, "removed 0 entries\n")
    # --provider no longer narrows what is kept (it used to remove the bfl entries here)
    old = run_cli("cache", "gc", str(both_providers), "--provider", "preview", "--cache-dir",
                  str(cache))
    assert (old.exit_code, old.stdout, old.stderr) == (0, "removed 0 entries\n", DEPRECATED)
    assert providers(cache) == ["bfl", "bfl", "preview", "preview"]


def test_gc_refuses_and_removes_nothing_when_a_paid_entry_cannot_be_read(
        both_providers: Path, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry that fails to read (EIO here; EMFILE, EACCES alike) is not a damaged one:
    before, gc called it damaged, left it out of the paid count and removed a paid result
    without asking."""
    cache = both_providers.parent / "cache"
    (unreadable,) = [path for path, entry in Cache(cache).entries()
                     if entry is not None and entry.provider == "bfl"
                     and entry.request["prompt"] == "Paint the door blue"]
    open_regular = files.open_regular

    def failing(path: Path) -> int:
        if Path(path) == unreadable:
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))
        return open_regular(path)

    with monkeypatch.context() as patched:
        patched.setattr(files, "open_regular", failing)
        refused = run_cli("cache", "gc", str(both_providers), "--cache-dir", str(cache))
    assert (refused.exit_code, refused.stdout) == (1, "")
    assert refused.stderr == (
        f"kontext-pipeline: cannot read the cache entry {unreadable} (Input/output error); it is "
        "left as it is: check the disk and the permissions there, then try again\n")
    assert providers(cache) == ["bfl", "bfl", "preview", "preview"]


def test_gc_refuses_to_remove_paid_results_without_a_terminal_or_yes(
        both_providers: Path, run_cli: RunCli) -> None:
    cache = both_providers.parent / "cache"
    gc = ["cache", "gc", str(both_providers), "--var", "color=red", "--cache-dir", str(cache)]
    refused = run_cli(*gc)
    assert refused.exit_code == 2
    assert refused.stdout == ""
    assert refused.stderr == (
        "kontext-pipeline: cache gc would remove 2 entries (1 paid bfl result, 4 credits) and "
        "there is no terminal to ask; pass --yes to remove them, or --dry-run to list them; "
        "nothing was removed\n")
    assert providers(cache) == ["bfl", "bfl", "preview", "preview"]

    blue = listed(cache, "blue")
    assert len(blue) == 2
    dry = run_cli(*gc, "--dry-run")
    assert dry.exit_code == 0
    assert dry.stdout.splitlines() == [
        *blue, "would remove 2 entries (1 paid bfl result, 4 credits); nothing was removed "
               "(--dry-run)"]
    assert providers(cache) == ["bfl", "bfl", "preview", "preview"]

    done = run_cli(*gc, "--yes")
    assert (done.exit_code, done.stdout) == (0, "removed 2 entries\n")
    assert providers(cache) == ["bfl", "preview"]
    assert all("Paint the door red" in line for line in cache_ls(cache))


def test_gc_removes_free_results_without_asking(both_providers: Path, run_cli: RunCli) -> None:
    cache = both_providers.parent / "cache"
    for _, entry in Cache(cache).entries():
        if entry is not None and entry.provider == "bfl":
            Cache(cache).entry_path(entry.key).unlink()
    done = run_cli("cache", "gc", str(both_providers), "--var", "color=red", "--cache-dir",
                   str(cache))
    assert (done.exit_code, done.stdout) == (0, "removed 1 entry\n")
    assert providers(cache) == ["preview"]


@pytest.mark.parametrize(("answer", "code", "left"), [
    ("n", 1, ["bfl", "bfl", "preview", "preview"]),
    ("y", 0, ["bfl", "preview"]),
])
def test_gc_asks_on_a_terminal_before_removing_paid_results(
        answer: str, code: int, left: list[str], both_providers: Path) -> None:
    cache = both_providers.parent / "cache"
    finished, transcript = on_a_terminal(
        ["cache", "gc", str(both_providers), "--var", "color=blue", "--cache-dir", str(cache)],
        answer)
    question = "Remove 2 entries (1 paid bfl result, 4 credits)? [y/N]: "
    expected = [f"{question}n", "Aborted!"] if answer == "n" else [
        f"{question}y", "removed 2 entries"]
    assert (finished, transcript.splitlines()) == (code, expected)
    assert providers(cache) == left


def on_a_terminal(args: list[str], answer: str) -> tuple[int, str]:
    """``kontext-pipeline ARGS`` with a pseudo-terminal for its input and output, typing
    ``answer`` at its question; its exit code and what the terminal showed."""
    controller, terminal = os.openpty()
    process = subprocess.Popen([sys.executable, "-m", "kontext_pipeline", *args],
                               stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    shown = b""
    answered = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the process has ended and closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        if not answered and shown.endswith(b"[y/N]: "):
            os.write(controller, answer.encode() + b"\n")
            answered = True
    os.close(controller)
    try:
        code = process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return code, shown.decode().replace("\r\n", "\n")


def test_verify_ignores_and_gc_removes_the_claim_files_killed_runs_left(
        run_cli: RunCli, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    leftover = cache / "v1" / "journal" / "ab" / f"ab{'c' * 62}.lock"
    leftover.parent.mkdir(parents=True)
    leftover.touch()
    verify = run_cli("cache", "verify", "--cache-dir", str(cache))
    assert (verify.exit_code, verify.stdout) == (0, "cache ok\n")
    gc = run_cli("cache", "gc", "--older-than", "30", "--cache-dir", str(cache))
    assert (gc.exit_code, gc.stdout) == (0, "removed 0 entries\n")
    assert not leftover.exists()
