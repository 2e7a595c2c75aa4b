"""Throughput against BFL's limits: wall time over the ideal, and beside BFL's own Python SDK.

The ideal of a run at a fixed latency is ``max(critical path, ceil(tasks / limit)) × latency``:
no runner can finish sooner against a service that takes ``latency`` per task and allows
``limit`` active tasks. Scenarios (the server runs in its own process, on loopback):

* chain: 24 variants × 3 chained steps, 2 s latency, limit 24 (ideal 6 s), timed in-process
  (the executor: from the first request to the last result stored) and as a whole
  ``kontext-pipeline run`` process, start-up, export, manifest and report.html included; and
  the same at 5 s latency, closer to the real service's (the overhead per step is constant);
* independent: 120 one-step variants at 1 s, limit 24 (ideal 5 s);
* independent-max: the same with flux-kontext-max and its limit of 6 (ideal 20 s);
* 12 flux-kontext-max tasks at 1 s, limit 6, as a whole process (ideal 2 s);
* chain 24x3 at 2 to 3 s (``serve --latency 2 --jitter 1``: each task's latency drawn from its
  prompt, so both clients meet the same ones), as a whole ``kontext-pipeline run`` process and,
  right after it, BFL's SDK (``blackforest`` 0.1.3, installed into a throwaway environment) on
  the same workload (``sdk_chain.py``), each against a fresh server started alike; ``--runs``
  pairs, the n-th with ``--fault-seed n``. The ideal of a jittered run comes from the latencies
  the server reports: the slowest variant's sum of step latencies, never below
  ``ceil(tasks / limit)`` × their mean.

Also reported: polls per task, the server's own peak of active tasks, and for whole processes
the start (the process launched → the server's first submit) and the finish (the server sent
the last result → the process exited; conservative, the true finish is later).

    python benchmarks/bench_throughput.py [--only fixed|jitter] [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import re
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from _harness import (
    CLI,
    KEY,
    Finished,
    Server,
    chain_recipe,
    manifest,
    server,
    table,
    validated,
    whole_process,
    workdir,
    write,
)
from _sdk import SDK, driver_command, sdk_python, write_workload

from kontext_pipeline import Cache, build_plan, load_recipe, open_provider
from kontext_pipeline.runner._executor import execute

Row = list[object]
STEP = re.compile(r"Step (?P<k>\d+) of picture (?P<n>\d+)")
TITLE = ("throughput: wall time over the ideal (limits: chain in-process <= 1.10; whole process "
         "fixed <= 1.20; jittered whole process <= 1.10 and below the SDK; polls/task <= 4; "
         "12 max tasks <= 1.3; finish <= 0.15 s)")
HEADER = ["scenario", "tasks", "limit", "latency s", "ideal s", "wall s", "ratio", "polls/task",
          "peak active", "start s", "finish s"]


def in_process(path: Path, url: str, limit: int, work: Path) -> float:
    """The executor's wall time: from the first request to the last result stored."""
    plan = build_plan(load_recipe(path), provider="bfl")
    environ = {"BFL_API_KEY": KEY, "BFL_API_BASE": url}

    async def executor() -> float:
        provider = open_provider("bfl", environ=environ, concurrency=limit)
        try:
            started = time.perf_counter()
            records = await execute([plan], cache=Cache(work / "cache"), provider=provider)
            wall = time.perf_counter() - started
        finally:
            await provider.aclose()
        if not all(record.ok for record in records):
            raise RuntimeError([record.error for record in records if not record.ok])
        return wall

    return asyncio.run(executor())


def run_command(path: Path, url: str, work: Path, *options: str) -> list[str]:
    return [*CLI, "run", str(path), "--api-base", url, "--cache-dir", str(work / "cache"),
            "--out", str(work / "out"), *options]


def whole_row(name: str, tasks: int, limit: int, latency: object, ideal: float, *,
              finished: Finished, stats: dict[str, Any]) -> Row:
    """A whole process's row; its start and finish are read against the server's clock."""
    if len(stats["tasks"]) != tasks or stats["repeated_submits"]:
        raise RuntimeError(f"{name}: {len(stats['tasks'])} tasks accepted, "
                           f"{stats['repeated_submits']} repeated; expected {tasks}")
    return [name, tasks, limit, latency, ideal, finished.wall, finished.wall / ideal,
            stats["polls"] / tasks, stats["peak_active"], stats["first_submit"] -
            finished.launched, finished.exited - stats["last_download"]]


def scenario(name: str, *, variants: int, steps: int, latency: float, limit: int,
             model: str = "flux-kontext-pro", measure_in_process: bool = True,
             whole: bool = False) -> list[Row]:
    tasks = variants * steps
    ideal = max(steps, math.ceil(tasks / limit)) * latency
    rows: list[Row] = []
    if measure_in_process:
        with workdir() as work, server(latency) as bfl:
            path = write(work / "bench.yaml", chain_recipe(variants, steps, model))
            wall = in_process(path, bfl.url, limit, work)
            stats = bfl.stats()
            rows.append([name, tasks, limit, latency, ideal, wall, wall / ideal,
                         stats["polls"] / tasks, stats["peak_active"], "-", "-"])
    if whole:
        with workdir() as work, server(latency) as bfl:
            path = validated(write(work / "bench.yaml", chain_recipe(variants, steps, model)))
            finished = whole_process(run_command(path, bfl.url, work),
                                     env={"BFL_API_KEY": KEY})
            assert manifest(work / "out").totals.calls == tasks
            rows.append(whole_row(f"{name} (whole process)", tasks, limit, latency, ideal,
                                  finished=finished, stats=bfl.stats()))
    return rows


def fixed_rows() -> list[Row]:
    return [
        *scenario("chain 24x3", variants=24, steps=3, latency=2.0, limit=24, whole=True),
        *scenario("chain 24x3 at 5 s", variants=24, steps=3, latency=5.0, limit=24),
        *scenario("independent 120", variants=120, steps=1, latency=1.0, limit=24),
        *scenario("independent 120 max", variants=120, steps=1, latency=1.0, limit=6,
                  model="flux-kontext-max"),
        *scenario("12 max tasks", variants=12, steps=1, latency=1.0, limit=6,
                  model="flux-kontext-max", measure_in_process=False, whole=True),
    ]


def jittered_ideal(tasks: list[dict[str, Any]], limit: int) -> float:
    """The slowest variant's sum of step latencies, never below what the limit allows."""
    by_variant: dict[str, float] = defaultdict(float)
    for task in tasks:
        step = STEP.fullmatch(task["prompt"])
        if step is None:
            raise RuntimeError(f"not a step of the chain: {task['prompt']!r}")
        by_variant[step["n"]] += task["latency"]
    mean = statistics.fmean(task["latency"] for task in tasks)
    return max(*by_variant.values(), math.ceil(len(tasks) / limit) * mean)


def latencies(bfl: Server) -> tuple[dict[str, Any], dict[str, float]]:
    stats = bfl.stats()
    return stats, {task["prompt"]: task["latency"] for task in stats["tasks"]}


def jittered_rows(runs: int) -> tuple[list[Row], list[float]]:
    """``runs`` pairs: the tool's whole process, then the SDK's, each against a fresh server
    with the same flags; the second list is each pair's tool wall over SDK wall."""
    variants, steps, limit = 24, 3, 24
    tasks = variants * steps
    rows: list[Row] = []
    versus: list[float] = []
    with sdk_python() as python, workdir() as shared:
        path = validated(write(shared / "bench.yaml", chain_recipe(variants, steps,
                                                                  "flux-kontext-pro")))
        workload = write_workload(path, shared / "workload.json")
        for run in range(runs):
            flags = ("--jitter", "1", "--fault-seed", str(run))
            with workdir() as work, server(2.0, *flags) as bfl:
                tool = whole_process(run_command(path, bfl.url, work),
                                     env={"BFL_API_KEY": KEY})
                assert manifest(work / "out").totals.calls == tasks
                tool_stats, drawn = latencies(bfl)
            with server(2.0, *flags) as bfl:
                sdk = whole_process(driver_command(python, bfl.url, workload),
                                    env={"BFL_API_KEY": KEY})
                sdk_stats, sdk_drawn = latencies(bfl)
            if sdk_drawn != drawn:
                raise RuntimeError("the two servers drew different latencies")
            ideal = jittered_ideal(tool_stats["tasks"], limit)
            rows.append(whole_row(f"chain 24x3 jittered #{run + 1} (whole process)", tasks,
                                  limit, "2-3", ideal, finished=tool, stats=tool_stats))
            rows.append(whole_row(f"  the same, BFL's SDK {SDK}", tasks, limit,
                                  "2-3", ideal, finished=sdk, stats=sdk_stats))
            versus.append(tool.wall / sdk.wall)
    return rows, versus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["fixed", "jitter"],
                        help="run only the fixed-latency rows, or only the jittered pairs")
    parser.add_argument("--runs", type=int, default=3,
                        help="jittered pairs (the tool, then the SDK) to run (default 3)")
    options = parser.parse_args()
    rows: list[Row] = []
    versus: list[float] = []
    if options.only != "jitter":
        rows += fixed_rows()
    if options.only != "fixed":
        jittered, versus = jittered_rows(options.runs)
        rows += jittered
    table(TITLE, HEADER, rows)
    if versus:
        print("jittered: tool wall / SDK wall per pair: "
              + ", ".join(f"{ratio:.3f}" for ratio in versus))


if __name__ == "__main__":
    main()
