"""BFL's official Python SDK beside the runner: a throwaway environment with ``blackforest``
installed from the configured package index, and the workload its driver
(``sdk_chain.py``) runs, taken from the recipe's own plan."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kontext_pipeline import build_plan, load_recipe

SDK = "blackforest==0.1.3"
DRIVER = Path(__file__).resolve().parent / "sdk_chain.py"


@contextmanager
def sdk_python() -> Iterator[Path]:
    """The interpreter of a fresh virtual environment holding the SDK, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="kontext-sdk-") as name:
        venv = Path(name) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True,
                       capture_output=True)
        python = venv / "bin" / "python"
        installed = subprocess.run([str(python), "-m", "pip", "install", "--quiet", SDK],
                                   capture_output=True, text=True, check=False)
        if installed.returncode != 0:
            raise RuntimeError(f"pip install {SDK} failed:\n{installed.stderr[-4000:]}")
        yield python


def write_workload(recipe: Path, path: Path) -> Path:
    """The recipe's tasks as the driver takes them: per variant, its steps in order, each with
    the model, prompt and seed the runner sends."""
    plan = build_plan(load_recipe(recipe), provider="bfl")
    variants: dict[str, list[dict[str, object]]] = {}
    for task in sorted(plan.tasks, key=lambda t: t.index):
        variants.setdefault(task.variant, []).append(
            {"model": task.model, "prompt": task.prompt, "seed": task.seed})
    path.write_text(json.dumps(list(variants.values())), encoding="utf-8")
    return path


def driver_command(python: Path, url: str, workload: Path) -> list[str]:
    return [str(python), str(DRIVER), url, str(workload)]
