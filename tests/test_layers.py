"""The package's layers hold: import-linter's contracts (in pyproject.toml) are kept, and they
bite when a lower layer imports a higher one; the public API is what ``__all__`` says, and
importing it stays light."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import kontext_pipeline as kp
from tests.conftest import ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(project: Path) -> subprocess.CompletedProcess[str]:
    """import-linter on the package in ``project``, with the repository's contracts."""
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=project, capture_output=True,
                          text=True, timeout=300, check=False,
                          env={"PYTHONPATH": str(project), "PATH": "/usr/bin:/bin"})


@pytest.fixture(scope="module")
def kept() -> subprocess.CompletedProcess[str]:
    return lint_imports(ROOT)


def copy_of_the_package(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "kontext_pipeline", tmp_path / "kontext_pipeline",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_repository_keeps_every_contract(kept: subprocess.CompletedProcess[str]) -> None:
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "Contracts: 3 kept, 0 broken." in kept.stdout


@pytest.mark.parametrize(("module", "line", "contract", "chain"), [
    ("recipe/_keys.py", "from kontext_pipeline.runner import _pipelines",
     "The layers point down the pipeline, never up",
     "kontext_pipeline.recipe._keys -> kontext_pipeline.runner._pipelines"),
    ("outputs/_records.py", "from kontext_pipeline.runner import _journal",
     "The layers point down the pipeline, never up",
     "kontext_pipeline.outputs._records -> kontext_pipeline.runner._journal"),
    ("store/_cache.py", "import click",
     "Only the command line imports click", "kontext_pipeline.store._cache -> click"),
    ("plan/_plan.py", "import httpx",
     "Only the BFL client and the bundled server speak HTTP with httpx",
     "kontext_pipeline.plan._plan -> httpx"),
])
def test_an_import_against_a_contract_breaks_it(tmp_path: Path, module: str, line: str,
                                                contract: str, chain: str) -> None:
    project = copy_of_the_package(tmp_path)
    source = project / "kontext_pipeline" / module
    source.write_text(f"{line}  # noqa\n{source.read_text(encoding='utf-8')}",
                      encoding="utf-8")
    broken = lint_imports(project)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert f"{contract} BROKEN" in broken.stdout
    assert chain in " ".join(broken.stdout.split())
    assert "Contracts: 2 kept, 1 broken." in broken.stdout


PUBLIC = [
    "AmbiguousSubmitError", "AuthenticationError", "BudgetExceededError", "Cache", "CacheError",
    "CheckResult", "Failure", "FrozenCacheMissError", "InvalidResultError", "KontextError",
    "LockError", "LockMismatchError", "Manifest", "ModerationError", "OutOfCreditsError",
    "OutputError", "PipelineReport", "Plan", "Problem", "ProvenanceError", "Provider",
    "ProviderError", "ProviderTimeoutError", "ProviderUnavailableError", "RefusedToSpendError",
    "RequestRejectedError", "RunResult", "SharedCache", "Spec", "SpecError", "Step",
    "StepsFailedError", "Task",
    "TaskFailedError", "TemplateError", "UsageError", "__version__", "arun", "build_plan",
    "check", "load_recipe", "open_provider", "run", "run_pipelines", "run_plans",
]


def test_the_public_api_is_exactly_all_and_each_name_resolves() -> None:
    assert kp.__all__ == PUBLIC  # a name added or dropped here is a decision, not an accident
    for name in kp.__all__:
        assert getattr(kp, name) is not None, name
        assert name in dir(kp)
    assert callable(kp.run)
    assert callable(kp.arun)
    assert issubclass(kp.SpecError, kp.KontextError)
    with pytest.raises(AttributeError, match="has no attribute 'cache'"):
        getattr(kp, "cache")  # noqa: B009  (the old flat module is gone)


def test_the_version_is_the_distributions() -> None:
    from importlib.metadata import version  # noqa: PLC0415

    assert kp.__version__ == version("kontext-pipeline")


def test_importing_the_package_imports_nothing_heavy() -> None:
    probe = ("import sys, kontext_pipeline as kp; kp.__version__; kp.KontextError; "
             "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60, check=True).stdout.split()
    heavy = {"asyncio", "click", "httpx", "jinja2", "jsonschema", "PIL", "rich", "starlette",
             "uvicorn", "yaml"}
    assert heavy.isdisjoint(loaded), sorted(heavy.intersection(loaded))


def test_no_module_is_left_outside_the_layers() -> None:
    package = ROOT / "kontext_pipeline"
    top = sorted(p.name for p in package.glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "errors.py"]
    layers = sorted(p.name for p in package.iterdir() if (p / "__init__.py").is_file())
    assert layers == ["_support", "cli", "outputs", "plan", "providers", "recipe", "runner",
                      "server", "store"]


def test_no_module_passes_four_hundred_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "kontext_pipeline").rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert long == {}
