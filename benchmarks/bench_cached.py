"""A fully cached re-run costs next to nothing: compared with ``validate`` on the same recipe.

100 variants × 5 chained steps (500 cached steps, 1-megapixel PNGs): the cache is filled once
with the preview provider, then ``kontext-pipeline run`` (every step a hit: no provider, no HTTP
client) is timed against ``kontext-pipeline validate``, each the median of several runs of the
whole process. Limit: run ≤ 2 × validate.

    python benchmarks/bench_cached.py
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

from _harness import CLI, ROOT, manifest, median_wall, table, workdir, write

from kontext_pipeline import Cache, build_plan, load_recipe, run_plans
from kontext_pipeline.server._preview import preview_provider

VARIANTS, STEPS, REPEAT = 100, 5, 5


def recipe() -> str:
    steps = ["  - {id: s0, image: street, prompt: 'Paint the car in shade {{ n }}'}"]
    steps += [f"  - {{id: s{k}, prompt: 'Edit {k} of picture {{{{ n }}}}'}}"
              for k in range(1, STEPS)]
    return "\n".join([
        "version: 1", "name: cached", "inputs:", "  street: street.jpg", "matrix:",
        f"  n: [{', '.join(str(i) for i in range(VARIANTS))}]", "steps:", *steps, ""])


def fill(path: Path, cache: Path, out: Path) -> float:
    plan = build_plan(load_recipe(path), provider="preview")
    started = time.perf_counter()
    asyncio.run(run_plans([plan], cache=Cache(cache), out_dirs=[out],
                          open_provider=lambda: preview_provider(latency=0.0)))
    return time.perf_counter() - started


def main() -> None:
    with workdir() as work:
        shutil.copy(ROOT / "pipelines" / "images" / "street.jpg", work / "street.jpg")
        path = write(work / "cached.yaml", recipe())
        cache, out = work / "cache", work / "out"
        filled = fill(path, cache, out)
        run = [*CLI, "run", str(path), "--provider", "preview", "--cache-dir", str(cache),
               "--out", str(out)]
        validate = median_wall([*CLI, "validate", str(path)], REPEAT)
        cached = median_wall(run, REPEAT)
        totals = manifest(out).totals
        assert totals.cache_hits == VARIANTS * STEPS, totals
        table(f"cached re-run of {VARIANTS} variants x {STEPS} steps (cache filled in "
              f"{filled:.1f} s; medians of {REPEAT}; limit: ratio <= 2)",
              ["command", "wall s", "ratio to validate"],
              [["kontext-pipeline validate", validate, 1.0],
               ["kontext-pipeline run (all cached)", cached, cached / validate]])


if __name__ == "__main__":
    main()
