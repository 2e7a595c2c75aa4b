"""The API key is never shown, logged, cached, journalled or written to a manifest: not on
success, and not on any failure path (a refused key, a rejected request, a network error, an
API that echoes the key back)."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from kontext_pipeline.errors import ProviderError, UsageError
from kontext_pipeline.providers._base import EditRequest, ProviderEvent
from kontext_pipeline.providers._policies import PollPolicy, RetryPolicy
from kontext_pipeline.providers.bfl import DEFAULT_API_BASE, BflProvider, http_client
from kontext_pipeline.providers.bfl._urls import holds_secret
from tests.bfl_helpers import KEY, RecordedSleep, run
from tests.conftest import RunCli, Start, WriteRecipe

RECIPE = """
    version: 1
    name: secretive
    inputs: {photo: photo.png}
    matrix:
      n: [1, 2]
    steps:
      - {id: paint, image: photo, prompt: "Paint it {{ n }} times"}
      - {id: frame, prompt: "Frame it"}
"""


def files_holding_the_key(*directories: Path) -> list[Path]:
    return [path for directory in directories for path in directory.rglob("*")
            if path.is_file() and KEY.encode() in path.read_bytes()]


@pytest.fixture(autouse=True)
def every_log_line(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)  # httpx and httpcore log every request at this level
    return caplog


CASES = {
    "success": ({}, (), 0, "secretive: 4 steps, 0 cached, 4 made, 16 credits"),
    "refused key": ({"api_keys": frozenset({"bfl_someone_else"})}, (), 1,
                    "the API refused the key (HTTP 403) on submit: check BFL_API_KEY (Invalid "
                    "API key)"),
    "faulty polls": ({}, ("500", "drop", "503"), 0,
                     "secretive: 4 steps, 0 cached, 4 made, 16 credits"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_no_run_shows_or_stores_the_key(
        case: tuple[dict[str, object], tuple[str, ...], int, str], bfl_server: Start,
        run_cli: RunCli, write_recipe: WriteRecipe,
        every_log_line: pytest.LogCaptureFixture) -> None:
    settings, poll_faults, code, expected = case
    recipe = write_recipe(RECIPE)
    server = bfl_server(**settings)
    server.state.script("poll", *poll_faults)
    cache, out = recipe.parent / "cache", recipe.parent / "out"
    result = run_cli("run", str(recipe), "--api-base", server.url, "--cache-dir", str(cache),
                     "--out", str(out), env={"BFL_API_KEY": KEY})
    assert result.exit_code == code, result.output
    assert expected in result.output
    assert KEY not in result.output
    assert KEY not in every_log_line.text
    assert every_log_line.text  # the requests were logged: the check above saw them
    assert files_holding_the_key(cache, out) == []
    assert all(r.key == KEY for r in server.state.requests if r.method == "POST")


def test_a_network_error_names_the_host_but_not_the_key(
        every_log_line: pytest.LogCaptureFixture) -> None:
    provider = BflProvider(client=http_client(), api_key=KEY, api_base="http://127.0.0.1:9",
                           retry=RetryPolicy(attempts=2, base_delay=0.001),
                           sleep=RecordedSleep(cap=0.0))
    events: list[ProviderEvent] = []

    async def go() -> object:
        try:
            return await provider.generate(EditRequest("flux-kontext-pro", "p", 1, label="t"),
                                           events.append)
        finally:
            await provider.aclose()

    with pytest.raises(ProviderError) as caught:
        run(go())
    assert str(caught.value).startswith("t: the submit failed 2 times; last: cannot connect to "
                                        "127.0.0.1:9 (ConnectError: ")
    assert KEY not in repr(caught.value)
    assert not [e for e in events if KEY in repr(e)]
    assert KEY not in every_log_line.text


def echoing(request: httpx.Request) -> httpx.Response:
    """A hostile API that puts the key it was sent into everything it answers."""
    key = request.headers["x-key"]
    if request.method == "POST" and "reject" in request.content.decode():
        return httpx.Response(422, json={"detail": [{"loc": ["body", "prompt"],
                                                     "msg": f"bad prompt for {key}"}]})
    if request.method == "POST":
        return httpx.Response(200, json={"id": "t1", "polling_url":
                                         f"{DEFAULT_API_BASE}/v1/get_result?id=t1"})
    if request.url.params.get("id") == "t1":
        return httpx.Response(200, json={"status": "Error", "details": {"error": f"for {key}"}})
    return httpx.Response(500, text=f"no, {key}")


@pytest.mark.parametrize(("prompt", "message"), [
    ("reject me", "test: the API rejected the request (HTTP 422) (prompt: bad prompt for "
                  "[API key])"),
    ("fail me", "test: the task ended with status 'Error' (task t1, prompt: 'fail me') (for "
                "[API key])"),
])
def test_an_api_that_echoes_the_key_has_it_blotted_out(prompt: str, message: str) -> None:
    events: list[ProviderEvent] = []
    provider = BflProvider(client=httpx.AsyncClient(transport=httpx.MockTransport(echoing)),
                           api_key=KEY, retry=RetryPolicy(attempts=2, base_delay=0.001),
                           polling=PollPolicy(first=0.001), sleep=RecordedSleep(cap=0.0))

    async def go() -> object:
        try:
            return await provider.generate(EditRequest("flux-kontext-pro", prompt, 1,
                                                       label="test"), events.append)
        finally:
            await provider.aclose()

    with pytest.raises(ProviderError) as caught:
        run(go())
    assert str(caught.value) == message
    assert KEY not in repr(caught.value)
    assert not [e for e in events if KEY in repr(e)]


def test_a_polling_url_holding_the_key_is_not_used() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"id": "t2", "polling_url": f"{DEFAULT_API_BASE}/v1/"
                                         f"get_result?id=t2&k={request.headers['x-key']}"})

    provider = BflProvider(client=httpx.AsyncClient(transport=httpx.MockTransport(answer)),
                           api_key=KEY)
    told: list[object] = []

    async def remember(accepted: object) -> None:
        told.append(accepted)

    async def go() -> object:
        try:
            return await provider.generate(EditRequest("flux-kontext-pro", "p", 1, label="t"),
                                           on_accepted=remember)
        finally:
            await provider.aclose()

    with pytest.raises(ProviderError) as caught:
        run(go())
    assert str(caught.value) == ("t: the API answered the submit with the API key in its task "
                                 "id or polling URL; they are not used (nor written anywhere)")
    assert told == []  # nothing reached the journal


PASSWORD = "hunter2-not-for-printing"  # noqa: S105  (a test's stand-in)
USERINFO = f"http://user:{PASSWORD}@"


@pytest.mark.parametrize("via", ["option", "environment"])
def test_a_password_in_the_api_base_is_refused_and_never_shown(
        via: str, bfl_server: Start, run_cli: RunCli, write_recipe: WriteRecipe) -> None:
    """Userinfo in the base is refused (exit 2): BFL needs none, and the base is shown in
    messages and stored with journalled tasks."""
    recipe = write_recipe(RECIPE)
    server = bfl_server()
    base = server.url.replace("http://", USERINFO)
    cache, out = recipe.parent / "cache", recipe.parent / "out"
    options = ("--api-base", base) if via == "option" else ()
    env = {"BFL_API_KEY": KEY, **({"BFL_API_BASE": base} if via == "environment" else {})}
    result = run_cli("run", str(recipe), *options, "--cache-dir", str(cache), "--out",
                     str(out), env=env)
    assert result.exit_code == 2, result.output
    shown = server.url.replace("http://", "http://***@")
    assert result.stderr.endswith(
        f"kontext-pipeline: the API base URL '{shown}' holds a user name or password: BFL "
        "needs none (the key goes in BFL_API_KEY), and the URL is shown and stored; remove it "
        "from --api-base or BFL_API_BASE\n")
    assert PASSWORD not in result.stdout + result.stderr
    assert [p for d in (cache, out) if d.exists() for p in d.rglob("*")
            if p.is_file() and PASSWORD.encode() in p.read_bytes()] == []
    assert server.state.requests == []


API_HOST = httpx.URL(DEFAULT_API_BASE).host  # named, never written out: no test reaches it


@pytest.mark.parametrize(("base", "message"), [
    (f"ftp://u:{PASSWORD}@h", "the API base URL 'ftp://***@h' is not an http:// or https:// "
                              "URL; check --api-base or BFL_API_BASE"),
    (f"https://{PASSWORD}@{API_HOST}/", f"the API base URL 'https://***@{API_HOST}/' holds a "
                                        "user name or password: BFL needs none (the key goes "
                                        "in BFL_API_KEY), and the URL is shown and stored; "
                                        "remove it from --api-base or BFL_API_BASE"),
    (f"https://{API_HOST}/{KEY}", "the API base URL holds the API key, which goes in "
                                  "BFL_API_KEY only; remove it from --api-base or BFL_API_BASE"),
])
def test_a_provider_takes_no_api_base_it_could_not_show(base: str, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        BflProvider(client=httpx.AsyncClient(), api_key=KEY, api_base=base)
    assert str(caught.value) == message
    assert PASSWORD not in message


@pytest.mark.parametrize("url", [
    f"https://d.example/s.png?leak={KEY}",
    f"https://d.example/s.png?leak={KEY.upper()}",
    "https://d.example/s.png#" + "".join(f"%{ord(c):02x}" for c in KEY),
    "https://d.example/" + KEY.replace("_", "%255F"),  # encoded twice over
    f"https://u:{KEY}@d.example/s.png",
    f"https://{KEY}.d.example/s.png",
])
def test_the_key_is_found_in_a_url_however_it_is_written(url: str) -> None:
    assert holds_secret(url, KEY)


@pytest.mark.parametrize(("url", "key"), [
    (f"https://d.example/s.png?sig={KEY[:-1]}", KEY),
    ("https://d.example/s.png?sig=%25%32", KEY),
    ("https://d.example/preview.png", "preview"),  # a stand-in's key is no secret
])
def test_a_url_without_the_key_is_not_refused(url: str, key: str) -> None:
    assert not holds_secret(url, key)
