"""A fully cached re-run served from the shared cache costs at most 3 × one from a warm local cache.

100 variants × 5 chained steps (500 steps, 1-megapixel PNGs), the preview provider: the local
cache and the shared cache (a bucket on moto's S3-compatible server, on loopback) are filled
once through the library, then ``kontext-pipeline run`` (the whole process) is timed

- from the warm local cache, without a shared cache;
- from the warm local cache, with the shared cache given (a local hit asks the store nothing);
- into an empty local cache from the shared cache (a new, empty cache directory each time):
  every result downloaded, verified and stored locally, no provider call.

Each run exports into a new, empty folder. Medians of several runs. Limit: shared ≤ 3 × warm.

Two more rows say what the thumbnails that travel with each result save: the report shows a
thumbnail of every image, kept in the local cache and uploaded with its result, so a machine
that takes a result takes its thumbnail too. One row is the warm local cache without its
thumbnails (the report makes all 500 again), the other an empty local cache holding only the
thumbnails, every result from the shared cache.

    python benchmarks/bench_shared.py
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from _harness import CLI, ROOT, create_bucket, manifest, moto_server, table, workdir, write

from kontext_pipeline import Cache, build_plan, load_recipe, run_plans
from kontext_pipeline.outputs._thumbnails import THUMBNAILS
from kontext_pipeline.server._preview import preview_provider
from kontext_pipeline.store._shared import SharedCache

VARIANTS, STEPS, REPEAT = 100, 5, 5
LIMIT = 3.0


def recipe() -> str:
    steps = ["  - {id: s0, image: street, prompt: 'Paint the car in shade {{ n }}'}"]
    steps += [f"  - {{id: s{k}, prompt: 'Edit {k} of picture {{{{ n }}}}'}}"
              for k in range(1, STEPS)]
    return "\n".join([
        "version: 1", "name: shared", "inputs:", "  street: street.jpg", "matrix:",
        f"  n: [{', '.join(str(i) for i in range(VARIANTS))}]", "steps:", *steps, ""])


def environment(endpoint: str) -> dict[str, str]:
    """Dummy credentials and the loopback endpoint, as the storage library reads them."""
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true"}


def fill(path: Path, cache: Path, out: Path, url: str) -> tuple[float, int]:
    """Run the recipe once through the library, uploading every result; (seconds, uploads)."""
    plan = build_plan(load_recipe(path), provider="preview")
    shared = SharedCache.open(url, os.environ)
    started = time.perf_counter()
    asyncio.run(run_plans([plan], cache=Cache(cache), out_dirs=[out], shared=shared,
                          open_provider=lambda: preview_provider(latency=0.0)))
    shared.close()
    return time.perf_counter() - started, shared.uploaded


def timed(kinds: dict[str, Callable[[int], list[str]]],
          env: dict[str, str]) -> dict[str, tuple[float, str]]:
    """Each kind of run ``REPEAT`` times as a whole process, the kinds taking turns (so that
    the machine's other load falls on all alike): per kind, the median wall time and what its
    last run printed on standard error."""
    walls: dict[str, list[float]] = {kind: [] for kind in kinds}
    said: dict[str, str] = {}
    for i in range(REPEAT):
        for kind, command in kinds.items():
            args = command(i)
            started = time.perf_counter()
            done = subprocess.run(args, capture_output=True, text=True, check=False, env=env)
            walls[kind].append(time.perf_counter() - started)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(args)} exited {done.returncode}:\n{done.stderr}")
            said[kind] = done.stderr
    return {kind: (statistics.median(walls[kind]), said[kind]) for kind in kinds}


def main() -> None:
    with workdir() as work, moto_server(work) as endpoint:
        shutil.copy(ROOT / "pipelines" / "images" / "street.jpg", work / "street.jpg")
        path = write(work / "shared.yaml", recipe())
        bucket = f"kp-{uuid.uuid4().hex}"
        create_bucket(endpoint, bucket)
        url = f"s3://{bucket}/bench"
        os.environ.update(environment(endpoint))  # the storage library reads os.environ
        env = dict(os.environ)
        warm = work / "warm"
        filled, uploaded = fill(path, warm, work / "fill-out", url)
        assert uploaded == VARIANTS * STEPS, uploaded

        def run(cache: str, out: str, *extra: str) -> list[str]:
            return [*CLI, "run", str(path), "--provider", "preview", "--cache-dir",
                    str(work / cache), "--out", str(work / out), *extra]

        steps = VARIANTS * STEPS
        thumbnails = Cache(warm).root / THUMBNAILS
        for i in range(REPEAT):
            shutil.copytree(warm, work / f"unpictured-{i}")
            shutil.rmtree(Cache(work / f"unpictured-{i}").root / THUMBNAILS)
            shutil.copytree(thumbnails, Cache(work / f"pictured-{i}").root / THUMBNAILS)
        shared = ("--shared-cache", url)
        runs = timed({
            "local": lambda i: run("warm", f"local-{i}"),
            "local-shared": lambda i: run("warm", f"local-shared-{i}", *shared),
            "shared": lambda i: run(f"empty-{i}", f"shared-{i}", *shared),
            "unpictured": lambda i: run(f"unpictured-{i}", f"unpictured-out-{i}"),
            "pictured": lambda i: run(f"pictured-{i}", f"pictured-out-{i}", *shared),
        }, env)
        assert f"{steps} cached, 0 to run" in runs["local-shared"][1], runs["local-shared"]
        for kind in ("shared", "pictured"):
            assert f"{steps} cached ({steps} from the shared cache)" in runs[kind][1], runs[kind]
        for out in ("local", "local-shared", "shared", "unpictured-out", "pictured-out"):
            totals = manifest(work / f"{out}-{REPEAT - 1}").totals
            assert (totals.cache_hits, totals.calls) == (steps, 0), totals
        assert Cache(work / f"empty-{REPEAT - 1}").stats().entries == steps
        local, local_shared, from_shared, unpictured, pictured = (
            runs[kind][0] for kind in ("local", "local-shared", "shared", "unpictured",
                                       "pictured"))
        table(f"cached re-run of {VARIANTS} variants x {STEPS} steps (local cache and bucket "
              f"filled in {filled:.1f} s; medians of {REPEAT}; limit: shared <= {LIMIT:g} x "
              "warm)",
              ["run", "wall s", "ratio to warm local"],
              [["warm local cache", local, 1.0],
               ["warm local cache, --shared-cache given", local_shared, local_shared / local],
               ["empty local cache, all from the shared cache", from_shared,
                from_shared / local],
               ["  for scale: warm local cache less its thumbnails", unpictured,
                unpictured / local],
               ["  for scale: only thumbnails local, all else shared", pictured,
                pictured / local]])


if __name__ == "__main__":
    main()
