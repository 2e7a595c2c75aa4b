"""``check`` costs about what ``validate`` does: compared on the same recipe.

100 variants × 5 chained steps (500 locked steps, every image exported): the recipe is run once
against the bundled server with the bfl provider, which writes its lock and exports the images;
then ``kontext-pipeline check`` (plan the recipe from the lock, compare every step, hash every
exported file; no key, no cache, no network) is timed against ``kontext-pipeline validate``,
each the median of several runs of the whole process. Limit: check ≤ 2 × validate.

    python benchmarks/bench_check.py
"""

from __future__ import annotations

import shutil

from _harness import CLI, KEY, ROOT, manifest, median_wall, run_cli, server, table, workdir, write

VARIANTS, STEPS, REPEAT = 100, 5, 5


def recipe() -> str:
    steps = ["  - {id: s0, image: street, prompt: 'Paint the car in shade {{ n }}'}"]
    steps += [f"  - {{id: s{k}, prompt: 'Edit {k} of picture {{{{ n }}}}'}}"
              for k in range(1, STEPS)]
    return "\n".join([
        "version: 1", "name: checked", "inputs:", "  street: street.jpg", "matrix:",
        f"  n: [{', '.join(str(i) for i in range(VARIANTS))}]", "steps:", *steps, ""])


def main() -> None:
    with workdir() as work:
        shutil.copy(ROOT / "pipelines" / "images" / "street.jpg", work / "street.jpg")
        path = write(work / "checked.yaml", recipe())
        out = work / "out"
        with server(0.0) as bfl:
            filled, _ = run_cli(["run", str(path), "--api-base", bfl.url, "--cache-dir",
                                 str(work / "cache"), "--out", str(out)],
                                env={"BFL_API_KEY": KEY})
            assert bfl.stats()["submits"] == VARIANTS * STEPS
        assert manifest(out).totals.steps == VARIANTS * STEPS
        lock = path.with_suffix(".lock")
        assert lock.is_file(), f"the run wrote no lock at {lock}"
        shutil.rmtree(work / "cache")  # check reads none: gone, it cannot help
        exported = sum(1 for p in out.rglob("*.png"))
        validate = median_wall([*CLI, "validate", str(path)], REPEAT)
        check = median_wall([*CLI, "check", str(path)], REPEAT)
        table(f"check of {VARIANTS} variants x {STEPS} steps ({exported} exported images, "
              f"{lock.stat().st_size // 1024} KiB of lock; filled in {filled:.1f} s; "
              f"medians of {REPEAT}; limit: ratio <= 2)",
              ["command", "wall s", "ratio to validate"],
              [["kontext-pipeline validate", validate, 1.0],
               ["kontext-pipeline check", check, check / validate]])


if __name__ == "__main__":
    main()
