"""``kontext-pipeline serve``: a plain httpx script uses it exactly as BFL's documentation does."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import RunCli

# BFL's documented Kontext example (requests swapped for httpx, nothing else changed): submit,
# then poll the returned polling_url every 0.5 s with the key and the id, until Ready.
DOCS_EXAMPLE = textwrap.dedent("""
    import base64, os, sys, time
    import httpx as requests

    base = sys.argv[1]
    with open(sys.argv[2], "rb") as image_file:
        img_str = base64.b64encode(image_file.read()).decode()
    request = requests.post(
        f"{base}/v1/flux-kontext-pro",
        headers={"accept": "application/json", "x-key": os.environ.get("BFL_API_KEY"),
                 "Content-Type": "application/json"},
        json={"prompt": "Change the car color to blue", "input_image": img_str},
    ).json()
    request_id = request["id"]
    polling_url = request["polling_url"]
    while True:
        time.sleep(0.5)
        result = requests.get(
            polling_url,
            headers={"accept": "application/json", "x-key": os.environ.get("BFL_API_KEY")},
            params={"id": request_id},
        ).json()
        if result["status"] == "Ready":
            print(f"Image ready: {result['result']['sample']}")
            break
        elif result["status"] in ["Error", "Failed"]:
            print(f"Generation failed: {result}")
            break
""")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def served() -> Iterator[str]:
    yield from serving("--latency", "0.6")


def serving(*options: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """``kontext-pipeline serve`` with ``options`` (and ``env`` added to the environment) in a
    process of its own: its base URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "kontext_pipeline", "serve", "--port", str(port), *options],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{base}/v1/get_result?id=x", headers={"x-key": "k"}, timeout=1)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.communicate(timeout=20)


def test_the_documented_example_works_against_serve(served: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", DOCS_EXAMPLE, served, "pipelines/images/street.jpg"],
        capture_output=True, text=True, timeout=60, env={"BFL_API_KEY": "bfl_docs_example",
                                                         "PATH": ""}, check=True)
    assert result.stdout.startswith(f"Image ready: {served}/delivery/")
    sample = result.stdout.split("Image ready: ", 1)[1].strip()
    image = httpx.get(sample, timeout=10)
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    assert image.content.startswith(b"\x89PNG")


def test_serve_answers_the_2026_phases_and_an_unknown_status_to_each_poll() -> None:
    for base in serving("--latency", "0", "--phases", "--unknown-status", "Queued"):
        headers = {"x-key": "bfl_phases"}
        task = httpx.post(f"{base}/v1/flux-kontext-pro", json={"prompt": "p"},
                          headers=headers, timeout=10).json()
        answers = [httpx.get(task["polling_url"], headers=headers, timeout=10).json()
                   for _ in range(5)]
        assert [a["status"] for a in answers] == [
            "Pending", "Reasoning", "Queued", "Generating", "Ready"]


@pytest.mark.parametrize("word", ["Ready", "Pending", " "])
def test_serve_refuses_an_unknown_status_the_api_knows(run_cli: RunCli, word: str) -> None:
    result = run_cli("serve", "--unknown-status", word)
    assert result.exit_code == 2
    assert result.stderr == (f"kontext-pipeline: --unknown-status {word!r}: give a status the "
                             "API does not document (e.g. Queued); known ones and empty words "
                             "are refused\n")


def test_serve_hands_out_urls_from_its_public_url_never_from_the_host_header() -> None:
    for base in serving("--latency", "0", "--public-url", "https://bfl.test:8443/"):
        forged = {"x-key": "bfl_public", "host": "evil.example"}
        task = httpx.post(f"{base}/v1/flux-kontext-pro", json={"prompt": "p"}, headers=forged,
                          timeout=10).json()
        assert task["polling_url"] == f"https://bfl.test:8443/eu4/v1/get_result?id={task['id']}"


@pytest.mark.parametrize("url", ["bfl.test:8443", "http://user:pw@bfl.test", "http://x/?a=1",
                                 "ftp://bfl.test"])
def test_serve_refuses_a_public_url_that_is_not_a_base(run_cli: RunCli, url: str) -> None:
    result = run_cli("serve", "--public-url", url)
    assert result.exit_code == 2
    assert result.stderr == (f"kontext-pipeline: --public-url {url!r}: give the base URL clients "
                             "reach this server at, http(s)://HOST[:PORT][/PATH], with no user "
                             "name, query or fragment\n")


def test_serve_takes_its_keys_from_the_environment() -> None:
    keys = {"KONTEXT_SERVE_API_KEY": "bfl_env_one bfl_env_two"}
    for base in serving("--latency", "0", env=keys):
        answers = [httpx.get(f"{base}/_stats", headers={"x-key": key}, timeout=10)
                   for key in ("bfl_env_two", "bfl_env_one", "bfl_other")]
        assert [a.status_code for a in answers] == [200, 200, 403]


def test_serve_help_says_where_a_key_is_better_kept(run_cli: RunCli) -> None:
    help_text = " ".join(run_cli("serve", "--help").stdout.split())
    assert ("Other users of the machine can read a command line (ps): prefer the variable. "
            "[env var: KONTEXT_SERVE_API_KEY]") in help_text
