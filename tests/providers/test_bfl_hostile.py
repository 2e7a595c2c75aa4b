"""A hostile server on loopback (see ``hostile.py``): whatever it answers, a step ends in one
clean failure. Bodies are bounded (the memory-heavy cases run the command line in a process
limited to 1 GiB of address space, so a regression fails the test instead of the machine),
every exchange has a deadline, results are the format asked for, and no URL that holds the
key is requested."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import TypedDict

import pytest
from PIL import Image

from kontext_pipeline.errors import (
    AmbiguousSubmitError,
    InvalidResultError,
    ProviderError,
    ProviderTimeoutError,
)
from kontext_pipeline.providers._base import EditRequest
from kontext_pipeline.providers._policies import PollPolicy, RetryPolicy
from kontext_pipeline.providers.bfl import BflProvider, http_client
from tests.bfl_helpers import KEY, RecordedSleep, png
from tests.conftest import RunCli
from tests.providers.hostile import HostileServer
from tests.test_images import png_header

RECIPE = """
    version: 1
    name: hostile
    inputs: {photo: photo.png}
    steps:
      - {id: paint, image: photo, prompt: "Paint it red"}
    outputs:
      poster: paint
"""
STEP = "  hostile / default / paint: "
LIMIT = 1 << 30  # the address space of a run under attack
LIMITED = ("import os, resource, sys; "
           "resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1]))); "
           "os.execv(sys.executable, [sys.executable, '-m', 'kontext_pipeline', *sys.argv[2:]])")


def recipe_in(directory: Path) -> Path:
    Image.new("RGB", (32, 24), (30, 120, 200)).save(directory / "photo.png")
    path = directory / "recipe.yaml"
    path.write_text(textwrap.dedent(RECIPE).lstrip(), encoding="utf-8")
    return path


def run_limited(tmp_path: Path, server: HostileServer) -> subprocess.CompletedProcess[str]:
    """``run`` the recipe against ``server`` in a process of at most :data:`LIMIT` bytes."""
    env = {**os.environ, "BFL_API_KEY": KEY, "MALLOC_ARENA_MAX": "2"}
    return subprocess.run(
        [sys.executable, "-c", LIMITED, str(LIMIT), "run", str(recipe_in(tmp_path)),
         "--api-base", server.url, "--cache-dir", str(tmp_path / "cache"),
         "--out", str(tmp_path / "out")],
        env=env, capture_output=True, text=True, timeout=300, check=False)


class Modes(TypedDict, total=False):
    """How each of the hostile server's endpoints misbehaves (see :class:`HostileServer`)."""

    submit: str
    poll: str
    result: str


MEMORY_CASES: dict[str, tuple[Modes, str]] = {
    "gzip-bombed poll": ({"poll": "gzip-bomb"},
                         "polling failed 10 times in a row; last: the answer is over 1 MB "
                         "(task t1)"),
    "gzip of gzip poll": ({"poll": "gzip-gzip-bomb"},
                          "polling failed 10 times in a row; last: the answer is over 1 MB "
                          "(task t1)"),
    "endless 500 to a submit": ({"submit": "endless-500"},
                                "the submit failed 10 times; last: HTTP 500 (its body is over "
                                "1 MB)"),
    "gzip-bombed result": ({"result": "gzip-bomb"}, "the result is over 50 MB"),
    "endless error body from the delivery host": (
        {"result": "endless-503"}, "the result could not be downloaded: HTTP 503 (task t1)"),
    "endless redirect body from the delivery host": (
        {"result": "endless-redirect"}, "the result URL redirected more than 5 times (task t1)"),
}


@pytest.mark.parametrize("case", MEMORY_CASES.values(), ids=MEMORY_CASES.keys())
def test_an_endless_body_ends_in_a_clean_step_failure(
        case: tuple[Modes, str], tmp_path: Path) -> None:
    modes, message = case
    with HostileServer(image=png(), **modes) as server:
        result = run_limited(tmp_path, server)
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.endswith(f"kontext-pipeline: 1 step failed:\n{STEP}{message}\n")
    assert "Traceback" not in result.stderr
    assert "MemoryError" not in result.stderr + result.stdout
    assert KEY not in result.stderr + result.stdout


def provider(server: HostileServer, *, attempts: int = 3, deadline: float = 30.0,
             request_deadline: float = 60.0) -> BflProvider:
    return BflProvider(
        client=http_client(timeout=10.0), api_key=KEY, api_base=server.url,
        retry=RetryPolicy(attempts=attempts, base_delay=0.01, max_delay=0.05,
                          request_deadline=request_deadline),
        polling=PollPolicy(first=0.02, max_interval=0.05, deadline=deadline),
        sleep=RecordedSleep(cap=0.05))


def fail(bfl: BflProvider, output_format: str = "png", bound: float = 60.0) -> ProviderError:
    """The error one request ends in; a request still going after ``bound`` s fails the test
    (a generous bound: it says the request ended, not how soon)."""

    async def go() -> object:
        try:
            return await asyncio.wait_for(bfl.generate(EditRequest(
                "flux-kontext-pro", "Paint it red", 1, output_format=output_format,
                label="t")), timeout=bound)
        finally:
            await bfl.aclose()

    with pytest.raises(ProviderError) as caught:
        asyncio.run(go())
    assert KEY not in repr(caught.value)
    return caught.value


def test_a_trickled_poll_cannot_hold_a_task_past_its_deadline() -> None:
    """A byte every 0.2 s never trips a read timeout (10 s): the deadline ends the task."""
    deadline = 2.0
    with HostileServer(poll="trickle") as server:
        started = time.monotonic()
        error = fail(provider(server, deadline=deadline), bound=deadline + 30)
        assert time.monotonic() - started < deadline + 30
    assert isinstance(error, ProviderTimeoutError)
    assert str(error) == "t: no result after 2 s (task t1); it was not submitted again"


def test_a_trickled_submit_answer_is_cut_off_and_not_retried() -> None:
    with HostileServer(submit="trickle") as server:  # the headers come at once, then bytes
        error = fail(provider(server, request_deadline=4.0), bound=34)
        assert len(server.hits("/v1/flux")) == 1
    assert isinstance(error, AmbiguousSubmitError)
    assert str(error) == ("t: the API accepted the submit (HTTP 200) but its answer did not "
                          "arrive whole within 4 s; the task id is lost and the API may have "
                          "billed it, so it is not retried")


def test_a_trickled_download_is_cut_off_each_attempt() -> None:
    with HostileServer(result="trickle") as server:
        error = fail(provider(server, attempts=2, request_deadline=2.0), bound=34)
        assert len(server.hits("/results")) == 2
    assert str(error) == ("t: the result could not be downloaded: no whole answer within 2 s "
                          "(task t1)")


def encoded(image: Image.Image, kind: str) -> bytes:
    out = io.BytesIO()
    image.save(out, kind)
    return out.getvalue()


EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 48\n"
       b"newpath 0 0 moveto 64 48 lineto stroke showpage\n%%EOF\n")
FORMAT_CASES = {
    "a TIFF for png": (encoded(Image.new("RGB", (64, 48)), "TIFF"), "png",
                       "is a TIFF image; PNG was asked for"),
    "an EPS for png": (EPS, "png", "is an EPS image; PNG was asked for"),
    "a PNG for jpeg": (png(), "jpeg", "is a PNG image; JPEG was asked for"),
    "13000 × 13000": (png_header(13000, 13000), "png",
                      "is 13000×13000 pixels (169.0 megapixels); at most 20 megapixels are "
                      "accepted"),
    "100000 × 100000": (png_header(100_000, 100_000), "png",
                        "declares far too many pixels (at most 20 megapixels are accepted)"),
}


@pytest.mark.parametrize("case", FORMAT_CASES.values(), ids=FORMAT_CASES.keys())
def test_a_result_is_the_format_asked_for_or_refused(case: tuple[bytes, str, str]) -> None:
    image, output_format, message = case
    with HostileServer(image=image) as server:
        error = fail(provider(server), output_format)
        assert len(server.hits("/results")) == 1  # the same bytes again would not help
    assert isinstance(error, InvalidResultError)
    assert str(error) == f"t: the downloaded result {message} (task t1)"


def test_a_tiff_result_is_neither_exported_nor_cached(run_cli: RunCli, tmp_path: Path) -> None:
    with HostileServer(image=encoded(Image.new("RGB", (64, 48)), "TIFF")) as server:
        result = run_cli("run", str(recipe_in(tmp_path)), "--api-base", server.url,
                         "--cache-dir", str(tmp_path / "cache"), "--out",
                         str(tmp_path / "out"), env={"BFL_API_KEY": KEY})
    assert result.exit_code == 1
    assert result.stderr.endswith(f"kontext-pipeline: 1 step failed:\n{STEP}the downloaded "
                                  "result is a TIFF image; PNG was asked for (task t1)\n")
    written = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert not [name for name in written if name.endswith((".tiff", ".tif", "poster.png"))]
    assert not [p for p in (tmp_path / "cache").rglob("*")
                if p.is_file() and p.read_bytes().startswith(b"II*\x00")]


@pytest.mark.parametrize("mode", ["key-in-query", "key-encoded", "key-in-userinfo"])
def test_a_result_url_holding_the_key_is_not_requested(mode: str) -> None:
    with HostileServer(poll=mode, image=png()) as server:
        error = fail(provider(server))
        assert server.hits("/results") == []
        assert all(KEY not in r.target for r in server.requests)
    assert isinstance(error, InvalidResultError)
    assert str(error) == ("t: the API gave a result URL that holds the API key; it is not "
                          "downloaded, so the key does not reach the delivery host (task t1)")


def test_a_polling_url_holding_the_encoded_key_is_not_polled() -> None:
    with HostileServer(submit="key-encoded") as server:
        error = fail(provider(server))
        assert server.hits("/v1/get_result") == []
    assert str(error) == ("t: the API answered the submit with the API key in its task id or "
                          "polling URL; they are not used (nor written anywhere)")


def test_the_key_in_a_result_url_goes_nowhere(run_cli: RunCli, tmp_path: Path) -> None:
    with HostileServer(poll="key-in-query", image=png()) as server:
        result = run_cli("run", str(recipe_in(tmp_path)), "--api-base", server.url,
                         "--cache-dir", str(tmp_path / "cache"), "--out",
                         str(tmp_path / "out"), env={"BFL_API_KEY": KEY})
        assert server.hits("/results") == []
    assert result.exit_code == 1
    assert result.stderr.endswith(f"kontext-pipeline: 1 step failed:\n{STEP}the API gave a "
                                  "result URL that holds the API key; it is not downloaded, so "
                                  "the key does not reach the delivery host (task t1)\n")
    assert KEY not in result.stdout + result.stderr
    assert [p for p in tmp_path.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()] \
        == []
