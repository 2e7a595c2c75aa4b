"""Bounded memory: the peak resident memory of a ``kontext-pipeline run`` of 120 tasks whose
inputs are 4-megapixel photos (6 distinct JPEGs of about 2.5 MB, each used by 20 tasks), at
1 s latency and the default 24 active tasks. Input bytes are read and base64-encoded only once a
task holds an active-task slot, and results stream to the cache. Limit: peak < 300 MB.

    python benchmarks/bench_memory.py
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

from _harness import KEY, manifest, server, table, workdir, write
from PIL import Image, ImageDraw, ImageFilter

INPUTS, VARIANTS = 6, 20
SIZE = (2448, 1632)  # 4.0 megapixels

# runs the command line in this interpreter, then reports its own peak RSS in kB: VmHWM, the
# high-water mark of this program's memory since it started (getrusage's ru_maxrss would also
# count the benchmark's own memory at the fork that started it)
PEAK = """
import sys
from kontext_pipeline.cli import cli
code = 0
try:
    cli(sys.argv[1:], prog_name="kontext-pipeline")
except SystemExit as stop:
    code = stop.code
with open("/proc/self/status") as status:
    print(next(line.split()[1] for line in status if line.startswith("VmHWM:")), file=sys.stderr)
sys.exit(code)
"""


def photo(path: Path, seed: int) -> None:
    """A photo-like 4 MP JPEG: shapes, texture and noise (so it does not compress to nothing)."""
    rng = random.Random(seed)
    image = Image.effect_noise(SIZE, 40).convert("RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(40):
        x, y = rng.randrange(SIZE[0]), rng.randrange(SIZE[1])
        r = rng.randrange(40, 400)
        draw.ellipse([x - r, y - r, x + r, y + r],
                     fill=tuple(rng.randrange(256) for _ in range(3)))
    image = Image.blend(image.filter(ImageFilter.GaussianBlur(2)),
                        Image.effect_noise(SIZE, 60).convert("RGB"), 0.25)
    image.save(path, "JPEG", quality=92)


def recipe() -> str:
    inputs = [f"  in{i}: in{i}.jpg" for i in range(INPUTS)]
    steps = [f"  - {{id: s{i}, image: in{i}, prompt: 'Edit photo {i}, take {{{{ n }}}}'}}"
             for i in range(INPUTS)]
    return "\n".join(["version: 1", "name: memory", "inputs:", *inputs, "matrix:",
                      f"  n: [{', '.join(str(n) for n in range(VARIANTS))}]", "steps:", *steps,
                      ""])


def main() -> None:
    with workdir() as work, server(1.0) as bfl:
        for i in range(INPUTS):
            photo(work / f"in{i}.jpg", i)
        sizes = [(work / f"in{i}.jpg").stat().st_size for i in range(INPUTS)]
        path = write(work / "memory.yaml", recipe())
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-c", PEAK, "run", str(path), "--api-base", bfl.url,
             "--cache-dir", str(work / "cache"), "--out", str(work / "out")],
            capture_output=True, text=True, env={"BFL_API_KEY": KEY, "PATH": ""}, check=False)
        wall = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(result.stderr)
        peak_mb = int(result.stderr.strip().splitlines()[-1]) / 1024
        tasks = manifest(work / "out").totals.calls
        stats = bfl.stats()
        table("peak memory of the runner (limit: < 300 MB)",
              ["tasks", "input MB each (avg)", "wall s", "peak active", "peak RSS MB"],
              [[tasks, sum(sizes) / len(sizes) / 1e6, wall, stats["peak_active"], peak_mb]])


if __name__ == "__main__":
    main()
