"""Shared helpers: the repository's paths, a CLI runner, and recipe files written on the fly."""

from __future__ import annotations

import functools
import json
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from jsonschema import Draft202012Validator
from PIL import Image

from kontext_pipeline._support import jsonsafe
from kontext_pipeline.cli import cli
from kontext_pipeline.outputs._manifest import MANIFEST, manifest_schema_text
from kontext_pipeline.server._run import BackgroundServer
from kontext_pipeline.server._state import FaultConfig, ServerConfig
from tests.s3_helpers import S3Bucket, S3Server, fresh_bucket

ROOT = Path(__file__).resolve().parent.parent
PIPELINES = ROOT / "pipelines"
INVALID = Path(__file__).resolve().parent / "recipes" / "invalid"

RunCli = Callable[..., Result]
WriteRecipe = Callable[..., Path]
Start = Callable[..., BackgroundServer]
"""What the ``bfl_server`` fixture gives: start a bundled server with these settings."""


def exported_images(out: Path) -> dict[str, bytes]:
    """Every PNG under ``out``, by its path relative to ``out``: what two runs compare."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.png"))}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "invalid_manifests: the test writes manifest.json files "
                            "that do not follow the manifest's schema on purpose")


@functools.cache
def _manifest_validator() -> Draft202012Validator:
    return Draft202012Validator(json.loads(manifest_schema_text()))


def schema_errors(path: Path) -> list[str]:
    """Where the manifest at ``path`` departs from the shipped schema (nothing if it follows
    it)."""
    try:
        document = jsonsafe.loads(path.read_bytes())
    except ValueError as exc:
        return [f"not JSON ({exc})"]
    return [f"{error.json_path}: {error.message}"
            for error in _manifest_validator().iter_errors(document)]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """After a test that passed, every manifest.json under its tmp_path must follow the
    shipped schema (``kontext-pipeline schema --manifest``): what the runs wrote is checked
    against the contract, test by test."""
    outcome = yield
    funcargs: dict[str, Any] = getattr(item, "funcargs", {})
    tmp_path = funcargs.get("tmp_path")
    if isinstance(tmp_path, Path) and item.get_closest_marker("invalid_manifests") is None:
        for path in sorted(tmp_path.rglob(MANIFEST)):
            if path.is_file() and not path.is_symlink():
                errors = schema_errors(path)
                if errors:
                    pytest.fail(f"{path} does not follow the manifest's schema: "
                                + "; ".join(errors[:5]), pytrace=False)
    return outcome


def _checkout_files() -> set[Path]:
    found = (*PIPELINES.rglob("*"), *ROOT.glob("*.lock"))
    return {p for p in found if "__pycache__" not in p.parts}


@pytest.fixture(autouse=True, scope="session")
def checkout_untouched() -> Iterator[None]:
    """No test writes into the checkout's recipes (a bfl run writes its lock beside the recipe:
    a test must run a copy)."""
    before = _checkout_files()
    yield
    added = sorted(str(p.relative_to(ROOT)) for p in _checkout_files() - before)
    assert added == [], f"tests wrote into the checkout: {added}"


@pytest.fixture(autouse=True)
def user_cache(tmp_path_factory: pytest.TempPathFactory,
               monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's user cache directory (where plan memos go, and results when no cache
    directory is given) is a fresh one of its own, never the user's: ``XDG_CACHE_HOME`` (which
    the platform's rules honour) points there, for the processes the test starts too; so does
    ``XDG_STATE_HOME`` (the key that signs the memos), to a folder beside it."""
    folder = tmp_path_factory.mktemp("user-cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("user-state")))
    monkeypatch.delenv("KONTEXT_CACHE_DIR", raising=False)
    return folder


@pytest.fixture
def run_cli() -> RunCli:
    """Invoke the command line in-process; stdout and stderr are kept apart."""

    def run(*args: str, env: dict[str, str] | None = None) -> Result:
        return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)

    return run


@pytest.fixture
def write_recipe(tmp_path: Path) -> WriteRecipe:
    """Write a recipe (dedented) into a fresh directory that also holds ``photo.png``."""
    Image.new("RGB", (32, 24), (30, 120, 200)).save(tmp_path / "photo.png")

    def write(text: str, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
        return path

    return write


@pytest.fixture
def bfl_server() -> Iterator[Start]:
    """Start the bundled BFL-compatible server on a loopback port: ``bfl_server(latency=0.05)``.
    Every server started is stopped after the test."""
    started: list[BackgroundServer] = []

    def start(faults: FaultConfig | None = None, **settings: Any) -> BackgroundServer:
        settings.setdefault("latency", 0.05)
        server = BackgroundServer(ServerConfig(faults=faults or FaultConfig(), **settings))
        server.__enter__()
        started.append(server)
        return server

    yield start
    for server in started:
        server.__exit__(None, None, None)


StartS3 = Callable[[], S3Server]
"""What the ``s3_server_factory`` fixture gives: start a server of the test's own."""


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3-compatible server on loopback, one for the whole session, started by the
    first test that asks for it. Tests that kill or stop a server use ``s3_server_factory``."""
    server = S3Server(tmp_path_factory.mktemp("s3-server"))
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> S3Bucket:
    """A fresh bucket on the session's server: ``.url`` (``s3://kp-<uuid>/team``), ``.environ``
    (the AWS variables that reach it), ``.name`` and ``.server`` (to list or tamper)."""
    return fresh_bucket(s3_server)


@pytest.fixture
def s3_server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartS3]:
    """Start servers of the test's own (to kill one mid-run); all are ended after the test."""
    started: list[S3Server] = []

    def start() -> S3Server:
        server = S3Server(tmp_path_factory.mktemp("s3-server"))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
