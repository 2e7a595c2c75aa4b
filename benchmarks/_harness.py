"""Shared by the benchmark scripts: a BFL-compatible server in its own process, recipes, and
timing. Each benchmark prints one table of figures and ratios against their limits."""

from __future__ import annotations

import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from kontext_pipeline.outputs._manifest import MANIFEST, Manifest, read_manifest

ROOT = Path(__file__).resolve().parent.parent
KEY = "bfl_benchmark"
CLI = [sys.executable, "-m", "kontext_pipeline"]

# The product as users run it: with its bytecode written (pip compiles it when it installs; a
# checkout writes it on the first import). A shell that forbids writing bytecode would have
# every process measured here compile the package again.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
# The plans of recipes validated before are remembered in the user cache directory: one of the
# benchmarks' own, not the user's.
_USER_CACHE = tempfile.TemporaryDirectory(prefix="kontext-bench-user-cache-")
os.environ["XDG_CACHE_HOME"] = os.path.join(_USER_CACHE.name, "cache")
os.environ["XDG_STATE_HOME"] = os.path.join(_USER_CACHE.name, "state")


def validated(recipe: Path) -> Path:
    """``recipe``, validated once (as a user has, before running it)."""
    run_cli(["validate", str(recipe)])
    return recipe


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    """``kontext-pipeline serve`` in a separate process (so it does not share the runner's CPU
    time slice or interpreter lock)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(f"{self.url}/_stats", headers={"x-key": KEY},
                                           timeout=10).json()
        return data


@contextmanager
def server(latency: float, *extra: str) -> Iterator[Server]:
    port = free_port()
    process = subprocess.Popen([*CLI, "serve", "--port", str(port), "--latency", str(latency),
                                *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/_stats", headers={"x-key": KEY}, timeout=1)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.05)
        yield Server(url)
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def moto_server(log_dir: Path) -> Iterator[str]:
    """moto's S3-compatible server in its own process on a loopback port the kernel picks (as
    tests/s3_helpers.py starts it for the tests); yields its URL. Output goes to a file."""
    log = log_dir / "moto.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
            stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT)
    try:
        yield _answering(process, log)
    finally:
        process.terminate()
        process.wait(timeout=30)


def _answering(process: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + 30
    while True:
        text = log.read_text(encoding="utf-8", errors="replace")
        found = re.search(r"Running on (http://127\.0\.0\.1:\d+)", text)
        if found:
            try:
                httpx.get(found.group(1), timeout=1, trust_env=False)
                return found.group(1)
            except httpx.TransportError:
                pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"moto's S3 server did not start; its output:\n{text[-2000:]}")
        time.sleep(0.05)


def create_bucket(url: str, name: str) -> None:
    httpx.put(f"{url}/{name}", timeout=10, trust_env=False).raise_for_status()


@contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="kontext-bench-") as name:
        yield Path(name)


def run_cli(args: Sequence[str], *, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run the command line; returns (wall seconds, the finished process)."""
    started = time.perf_counter()
    result = subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd,
                            env={**os.environ, **(env or {})}, check=False)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return wall, result


@dataclass(frozen=True)
class Finished:
    """A whole process, timed: ``launched`` and ``exited`` are epoch seconds (the clock the
    server's ``/_stats`` times are in), ``wall`` the seconds between, on a monotonic clock."""

    launched: float
    exited: float
    wall: float


def whole_process(command: Sequence[str], *, env: dict[str, str] | None = None,
                  cwd: Path | None = None) -> Finished:
    """Run ``command`` to its end, its standard output thrown away (a client that prints a line
    per poll must not be timed writing to a pipe), its errors kept to say why if it fails."""
    environ = {**os.environ, **(env or {})}
    launched, started = time.time(), time.perf_counter()
    with subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, cwd=cwd, env=environ) as process:
        _, errors = process.communicate()
    wall, exited = time.perf_counter() - started, time.time()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {process.returncode}:\n"
                           f"{errors.decode(errors='replace')[-4000:]}")
    return Finished(launched, exited, wall)


def chain_recipe(variants: int, steps: int, model: str) -> str:
    """``variants`` one-matrix-value variants of ``steps`` chained steps, prompts
    ``Step k of picture n`` (the first step makes a picture from its prompt alone)."""
    lines = ["version: 1", "name: bench", f"model: {model}", "matrix:",
             f"  n: [{', '.join(str(i) for i in range(variants))}]", "steps:"]
    lines += [f"  - {{id: s{k}, prompt: 'Step {k} of picture {{{{ n }}}}'}}" for k in range(steps)]
    return "\n".join(lines) + "\n"


def median_wall(command: Sequence[str], repeat: int) -> float:
    walls = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        walls.append(time.perf_counter() - started)
    return statistics.median(walls)


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print one aligned table."""
    cells = [[str(c) for c in header], *[[_cell(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(title)
    for index, row in enumerate(cells):
        print("  " + "  ".join(c.rjust(w) if i else c.ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if index == 0:
            print("  " + "  ".join("-" * w for w in widths))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"
    return str(value)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def manifest(out: Path) -> Manifest:
    """The manifest a run wrote into ``out``, read with the package's own model."""
    return read_manifest(out / MANIFEST)
