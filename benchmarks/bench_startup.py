"""Start-up: ``kontext-pipeline --help`` against ``python -c "import click"`` (the floor of any
click program). Medians of 21 runs of each whole process. Limit: ratio ≤ 1.5.

    python benchmarks/bench_startup.py
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from _harness import ROOT, median_wall, table

REPEAT = 21


def main() -> None:
    script = shutil.which("kontext-pipeline") or str(Path(sys.executable).parent /
                                                     "kontext-pipeline")
    floor = median_wall([sys.executable, "-c", "import click"], REPEAT)
    rows = [["python -c 'import click'", floor, 1.0]]
    for label, command in (
        ("kontext-pipeline --help", [script, "--help"]),
        ("kontext-pipeline validate --help", [script, "validate", "--help"]),
        ("kontext-pipeline validate poster-chain.yaml",
         [script, "validate", str(ROOT / "pipelines" / "poster-chain.yaml")]),
    ):
        wall = median_wall(command, REPEAT)
        rows.append([label, wall, wall / floor])
    table(f"start-up (medians of {REPEAT}; limit: --help ratio <= 1.5)",
          ["command", "wall s", "ratio"], rows)


if __name__ == "__main__":
    main()
