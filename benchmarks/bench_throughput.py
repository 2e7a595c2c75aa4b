"""Throughput against BFL's limits: wall time over the ideal.

The ideal of a run is ``max(critical path, ceil(tasks / limit)) × task latency``: no runner can
finish sooner against a service that takes ``latency`` per task and allows ``limit`` active
tasks. Scenarios (the server runs in its own process, on loopback):

* chain: 24 variants × 3 chained steps, 2 s latency, limit 24 (ideal 6 s), timed in-process
  (the executor: from the first request to the last result stored) and as a whole
  ``kontext-pipeline run`` process, start-up, export, manifest and report.html included; and
  the same at 5 s latency, closer to the real service's (the overhead per step is constant);
* independent: 120 one-step variants at 1 s, limit 24 (ideal 5 s);
* independent-max: the same with flux-kontext-max and its limit of 6 (ideal 20 s).

Also reported: polls per task and the server's own peak of active tasks.

    python benchmarks/bench_throughput.py
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

from _harness import KEY, manifest, run_cli, server, table, workdir, write

from kontext_pipeline import Cache, build_plan, load_recipe, open_provider
from kontext_pipeline.runner._executor import execute


def recipe(variants: int, steps: int, model: str) -> str:
    lines = ["version: 1", "name: bench", f"model: {model}", "matrix:",
             f"  n: [{', '.join(str(i) for i in range(variants))}]", "steps:"]
    lines += [f"  - {{id: s{k}, prompt: 'Step {k} of picture {{{{ n }}}}'}}" for k in range(steps)]
    return "\n".join(lines) + "\n"


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


def scenario(name: str, *, variants: int, steps: int, latency: float, limit: int,
             model: str = "flux-kontext-pro", whole_process: bool = False) -> list[list[object]]:
    tasks = variants * steps
    ideal = max(steps, math.ceil(tasks / limit)) * latency
    rows: list[list[object]] = []
    with workdir() as work, server(latency) as bfl:
        path = write(work / "bench.yaml", recipe(variants, steps, model))
        wall = in_process(path, bfl.url, limit, work)
        stats = bfl.stats()
        rows.append([name, tasks, limit, latency, ideal, wall, wall / ideal,
                     stats["polls"] / tasks, stats["peak_active"]])
    if whole_process:
        with workdir() as work, server(latency) as bfl:
            path = write(work / "bench.yaml", recipe(variants, steps, model))
            wall, _ = run_cli(["run", str(path), "--api-base", bfl.url, "--cache-dir",
                               str(work / "cache"), "--out", str(work / "out"),
                               "--concurrency", str(limit)], env={"BFL_API_KEY": KEY})
            stats = bfl.stats()
            assert manifest(work / "out").totals.calls == tasks
            rows.append([f"{name} (whole process)", tasks, limit, latency, ideal, wall,
                         wall / ideal, stats["polls"] / tasks, stats["peak_active"]])
    return rows


def main() -> None:
    rows = [
        *scenario("chain 24x3", variants=24, steps=3, latency=2.0, limit=24,
                  whole_process=True),
        *scenario("chain 24x3 at 5 s", variants=24, steps=3, latency=5.0, limit=24),
        *scenario("independent 120", variants=120, steps=1, latency=1.0, limit=24),
        *scenario("independent 120 max", variants=120, steps=1, latency=1.0, limit=6,
                  model="flux-kontext-max"),
    ]
    table("throughput: wall time over the ideal (limits: 1.10 in-process, 1.20 whole process; "
          "polls/task <= 4 at 2 s)",
          ["scenario", "tasks", "limit", "latency s", "ideal s", "wall s", "ratio",
           "polls/task", "peak active"], rows)


if __name__ == "__main__":
    main()
