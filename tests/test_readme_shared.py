"""The README's shared-cache commands, run as written: on one machine, then on another with an
empty cache and a checkout without the first one's lock and images, against the bundled BFL
server and moto's S3 server on loopback."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import PIPELINES, ROOT, Start
from tests.s3_helpers import S3Bucket

_README_URL = "s3://team-assets/kontext"


def _readme_commands() -> list[str]:
    """The commands of the README's shared-cache block, its ``export`` line left out (the test
    gives the credentials), comments cut."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### The shared cache", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None
    lines = [line.split("  #", 1)[0].strip() for line in block.group(1).splitlines()]
    assert lines[0].startswith("export AWS_ACCESS_KEY_ID=")
    return [line for line in lines[1:] if line]


def _machine(tmp: Path, name: str) -> Path:
    """A checkout of ``pipelines/`` without lock or outputs, as a fresh clone has it."""
    checkout = tmp / name
    shutil.copytree(PIPELINES, checkout / "pipelines",
                    ignore=shutil.ignore_patterns("*.lock", "out"))
    return checkout


def test_the_readmes_shared_cache_commands_run_as_written(tmp_path: Path, bfl_server: Start,
                                                          s3_bucket: S3Bucket) -> None:
    commands = _readme_commands()
    assert [c.split()[1] for c in commands] == ["run", "plan", "run", "cache"]
    assert all(_README_URL in c for c in commands)
    server = bfl_server(latency=0.02)
    env = {**os.environ, **s3_bucket.environ, "BFL_API_KEY": "test-key",
           "BFL_API_BASE": server.url}
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")

    def run(command: str, checkout: Path, cache: str) -> str:
        argv = shlex.split(command.replace(_README_URL, s3_bucket.url))
        done = subprocess.run(argv, cwd=checkout, env={**env, "KONTEXT_CACHE_DIR": cache},
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    first, second = _machine(tmp_path, "first"), _machine(tmp_path, "second")
    made = run(commands[0], first, str(tmp_path / "cache-first"))
    assert "3 new results uploaded" in made
    paid = sum(server.state.submits.values())
    assert paid == 3

    planned = run(commands[1], second, str(tmp_path / "cache-second"))
    assert "3 of 3 cached (3 in the shared cache)" in planned
    taken = run(commands[2], second, str(tmp_path / "cache-second"))
    assert "3 cached (3 from the shared cache)" in taken
    assert sum(server.state.submits.values()) == paid  # the second machine paid nothing
    assert "uploaded" not in taken
    info = run(commands[3], second, str(tmp_path / "cache-second"))
    assert "results:   3 (" in info
    assert "3 steps, 3 in the local cache, 0 more in the shared cache, 0 in neither" in info
    for name in ("poster-chain/poster.png",):
        assert ((first / "out" / name).read_bytes() == (second / "out" / name).read_bytes())
