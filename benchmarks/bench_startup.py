"""Start-up: ``kontext-pipeline --help`` against ``python -c "import click"`` (the floor of any
click program), medians of 21 runs of each whole process, limit: ratio ≤ 1.5; and a run's way to
its first submit: a 24×3 chain recipe, validated once and run once (warm-up), then 11 runs each
with a fresh ``--cache-dir`` and ``--out`` against the server at 0.05 s latency, from the
launch (just before the process starts) to the server's first submit, median, against
``python -c "import httpx"`` (the floor of any program that speaks HTTP with httpx), limit:
ratio ≤ 1.3; beside it, measured alike, a bare script that only submits one request with
httpx's ``AsyncClient`` (what any asyncio client of the API starts with), and a script that only
makes the imports that bare script has made by its connection, then submits by hand on a
socket. Every process runs with ``XDG_CACHE_HOME`` in a throwaway directory, so nothing a
previous run left in the user's cache counts.

    python benchmarks/bench_startup.py
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _harness import KEY, ROOT, chain_recipe, median_wall, server, table, whole_process, write

REPEAT = 21
RUNS = 11


def first_submit(script: str, work: Path) -> float:
    """The median seconds from a run's launch to the server's first submit of that run."""
    recipe = write(work / "chain.yaml", chain_recipe(24, 3, "flux-kontext-pro"))
    subprocess.run([script, "validate", str(recipe)], check=True, capture_output=True)
    starts: list[float] = []
    with server(0.05) as bfl:
        for run in range(RUNS + 1):  # the first is the warm-up
            (work / "chain.lock").unlink(missing_ok=True)  # no results from an earlier run
            before = len(bfl.stats()["tasks"])
            finished = whole_process([script, "run", str(recipe), "--api-base", bfl.url,
                                      "--cache-dir", str(work / f"cache-{run}"),
                                      "--out", str(work / f"out-{run}")],
                                     env={"BFL_API_KEY": KEY})
            tasks = bfl.stats()["tasks"][before:]
            if len(tasks) != 72:
                raise RuntimeError(f"run {run} submitted {len(tasks)} tasks, not 72")
            if run:
                starts.append(min(float(task["arrived"]) for task in tasks) -
                              finished.launched)
    return statistics.median(starts)


BARE = """
import asyncio, sys
import httpx

async def submit():
    async with httpx.AsyncClient() as client:
        await client.post(sys.argv[1] + "/v1/flux-kontext-pro", headers={"x-key": sys.argv[2]},
                          json={"prompt": "A bare submit", "seed": 1})

asyncio.run(submit())
"""


IMPORTS_ONLY = """
import socket, sys
import asyncio, httpx, httpcore._async, httpcore._backends.anyio
import anyio._backends._asyncio, anyio._core._sockets, anyio.lowlevel

host, port = sys.argv[1].removeprefix("http://").split(":")
body = b'{"prompt": "Imports, then one submit", "seed": 1}'
with socket.create_connection((host, int(port))) as connection:
    connection.sendall(b"POST /v1/flux-kontext-pro HTTP/1.1\\r\\nhost: " + host.encode() +
                       b"\\r\\nx-key: " + sys.argv[2].encode() +
                       b"\\r\\ncontent-type: application/json\\r\\ncontent-length: " +
                       str(len(body)).encode() + b"\\r\\nconnection: close\\r\\n\\r\\n" + body)
    connection.recv(65536)
"""
"""The very modules the bare script above has loaded when it opens its connection (asyncio,
httpx, and the parts of httpcore and anyio that httpx imports only once a transport is made and
a connection opened), then the same submit written by hand on a socket: what no asyncio httpx
client can do without, before its first request."""


def one_submit(script: str) -> float:
    """The median seconds from the launch of ``script``, which submits one request, to the
    server seeing it."""
    starts: list[float] = []
    with server(0.05) as bfl:
        for run in range(RUNS + 1):  # the first is the warm-up
            before = len(bfl.stats()["tasks"])
            finished = whole_process([sys.executable, "-c", script, bfl.url, KEY])
            tasks = bfl.stats()["tasks"][before:]
            if len(tasks) != 1:
                raise RuntimeError(f"the script submitted {len(tasks)} tasks, not 1")
            if run:
                starts.append(float(tasks[0]["arrived"]) - finished.launched)
    return statistics.median(starts)


def main() -> None:
    script = shutil.which("kontext-pipeline") or str(Path(sys.executable).parent /
                                                     "kontext-pipeline")
    with tempfile.TemporaryDirectory(prefix="kontext-startup-") as name:
        work = Path(name)
        os.environ["XDG_CACHE_HOME"] = str(work / "xdg-cache")
        floor = median_wall([sys.executable, "-c", "import click"], REPEAT)
        rows: list[list[object]] = [["python -c 'import click'", floor, 1.0]]
        for label, command in (
            ("kontext-pipeline --help", [script, "--help"]),
            ("kontext-pipeline validate --help", [script, "validate", "--help"]),
            ("kontext-pipeline validate poster-chain.yaml",
             [script, "validate", str(ROOT / "pipelines" / "poster-chain.yaml")]),
        ):
            wall = median_wall(command, REPEAT)
            rows.append([label, wall, wall / floor])
        httpx_floor = median_wall([sys.executable, "-c", "import httpx"], REPEAT)
        rows.append(["python -c 'import httpx'", httpx_floor, 1.0])
        loads = one_submit(IMPORTS_ONLY)
        rows.append([f"an httpx client's imports, then a socket's submit (median of {RUNS})",
                     loads, loads / httpx_floor])
        bare = one_submit(BARE)
        rows.append([f"a bare httpx script to its one submit (median of {RUNS})", bare,
                     bare / httpx_floor])
        start = first_submit(script, work)
        rows.append([f"run to first submit (24x3, median of {RUNS})", start,
                     start / httpx_floor])
    table(f"start-up (medians of {REPEAT}; limits: --help ratio <= 1.5 over import click; "
          "run to first submit <= 1.3 over import httpx)", ["command", "wall s", "ratio"], rows)


if __name__ == "__main__":
    main()
