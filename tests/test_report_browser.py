"""report.html in a real browser (headless Chromium): every image in its place, a click on a
thumbnail opens the full-size image, a hostile prompt stays text, and the layout never strands an
arrow or breaks a path mid-name. Chromium is driven over the DevTools protocol on a pipe (no
extra dependency); every wait is bounded."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import pytest
from PIL import Image, ImageChops, ImageStat

from kontext_pipeline.outputs._html_report import render_report
from kontext_pipeline.outputs._manifest import parse_manifest
from kontext_pipeline.store._cache import Cache
from tests.report_helpers import (
    HOSTILE,
    PHOTO_COLOR,
    STRIP,
    PreviewRun,
    open_thumbnail,
    preview_run,
    thumbnails,
)

WINDOW = (1600, 1800)  # wide and tall enough for the whole two-variant page and its grid
WAIT = 30.0  # seconds: the longest any one answer of the browser is waited for


@pytest.fixture(scope="module")
def strip(tmp_path_factory: pytest.TempPathFactory) -> PreviewRun:
    run = preview_run(tmp_path_factory.mktemp("strip"), STRIP)
    assert run.code == 0, run.stderr
    return run


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("chromium is not installed (Debian: apt-get install chromium), so the report "
                "cannot be looked at in a browser")


def _options(profile: Path, size: tuple[int, int]) -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--force-device-scale-factor=1", "--force-color-profile=srgb",
            "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}",
            f"--window-size={size[0]},{size[1]}"]


# --- the DevTools protocol over a pipe ------------------------------------------------------

_AT_3_AND_4 = """
import os, sys
commands, answers = int(sys.argv[1]), int(sys.argv[2])
answers = os.dup(answers) if answers == 3 else answers
os.dup2(commands, 3)
os.dup2(answers, 4)
for fd in {commands, answers} - {3, 4}:
    os.close(fd)
os.execv(sys.argv[3], sys.argv[3:])
"""
"""Puts the pipes where Chromium looks for them, then becomes Chromium."""


class DevTools:
    """A headless Chromium driven through ``--remote-debugging-pipe``: it reads commands on its
    file descriptor 3 and writes answers and events on 4, each one JSON message ended by NUL.
    Commands go to one page (a session of the browser), whose viewport is ``size``."""

    def __init__(self, browser: str, profile: Path, size: tuple[int, int]) -> None:
        commands, self._commands = os.pipe()
        self._answers, answers = os.pipe()
        log = (profile.parent / f"{profile.name}.log").open("wb")
        self._process = subprocess.Popen(
            [sys.executable, "-c", _AT_3_AND_4, str(commands), str(answers), browser,
             *_options(profile, size), "--remote-debugging-pipe", "about:blank"],
            pass_fds=(commands, answers), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        os.close(commands)
        os.close(answers)
        self._buffer = b""
        self._last = 0
        self.events: list[dict[str, Any]] = []
        try:
            target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self._session = self.call("Target.attachToTarget",
                                      {"targetId": target, "flatten": True})["sessionId"]
            self.page("Page.enable")
            self.page("Emulation.setDeviceMetricsOverride",
                      {"width": size[0], "height": size[1], "deviceScaleFactor": 1,
                       "mobile": False})
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> DevTools:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        try:
            if self._process.poll() is None:
                self._send({"id": self._next_id(), "method": "Browser.close"})
                self._process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self._process.kill()
            self._process.wait(timeout=10)
        finally:
            for fd in (self._commands, self._answers):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def call(self, method: str, params: dict[str, Any] | None = None, *,
             session: str | None = None) -> dict[str, Any]:
        """Send a command and wait (bounded) for its answer; an error answer fails the test."""
        number = self._next_id()
        message: dict[str, Any] = {"id": number, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        self._send(message)
        deadline = time.monotonic() + WAIT
        while True:
            answer = self._receive(deadline, f"the answer to {method}")
            if answer.get("id") == number:
                assert "error" not in answer, (method, answer["error"])
                result: dict[str, Any] = answer["result"]
                return result
            if "method" in answer:
                self.events.append(answer)

    def page(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """:meth:`call` in the page's session."""
        return self.call(method, params, session=self._session)

    def wait_for(self, method: str, matches: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first event ``method`` (received already, or within :data:`WAIT` seconds) whose
        params ``matches``; the events before it are dropped."""
        deadline = time.monotonic() + WAIT
        while True:
            while self.events:
                event = self.events.pop(0)
                if event["method"] == method and matches(event.get("params", {})):
                    return event
            self.events.append(self._receive(deadline, f"the event {method}"))

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-like values only)."""
        answer = self.page("Runtime.evaluate", {"expression": expression,
                                                "returnByValue": True})
        assert "exceptionDetails" not in answer, answer["exceptionDetails"]
        return answer["result"].get("value")

    def open(self, url: str) -> None:
        """Navigate to ``url`` and wait until it has loaded."""
        self.events.clear()
        self.page("Page.navigate", {"url": url})
        self.wait_for("Page.loadEventFired", lambda _: True)

    def click(self, x: float, y: float) -> None:
        """A left click at (x, y) in the viewport, as a mouse makes it."""
        self.page("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})
        for kind in ("mousePressed", "mouseReleased"):
            self.page("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y,
                                                   "button": "left", "clickCount": 1})

    def _next_id(self) -> int:
        self._last += 1
        return self._last

    def _send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._commands, data):]

    def _receive(self, deadline: float, what: str) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._answers], [], [], max(left, 0))
            assert ready, f"chromium sent no {what} within {WAIT:.0f} s"
            chunk = os.read(self._answers, 1 << 16)
            assert chunk, f"chromium closed its pipe before {what} (exit {self._process.poll()})"
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        parsed: dict[str, Any] = json.loads(message)
        return parsed


# --- screenshots ------------------------------------------------------------------------------

_RECTS = """<script>
document.title = JSON.stringify([...document.querySelectorAll(".pic")].map(e => {
  const r = e.getBoundingClientRect();
  return [e.className, r.x, r.y, r.width, r.height];
}));
</script>"""


def chromium(browser: str, page: Path, profile: Path, *options: str) -> str:
    command = [browser, *_options(profile, WINDOW), *options, page.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def screenshot(browser: str, page: Path, tmp_path: Path) -> Image.Image:
    shot = tmp_path / f"{page.stem}.png"
    chromium(browser, page, tmp_path / "profile", f"--screenshot={shot}")
    with Image.open(shot) as image:
        assert image.size == WINDOW
        converted: Image.Image = image.convert("RGB")
    return converted


def boxes(browser: str, html: str, tmp_path: Path) -> list[tuple[str, tuple[int, int, int, int]]]:
    """Where the browser lays out each picture: (class, screen box), measured on a copy of the
    page that writes them into its title (the report itself runs no script)."""
    page = tmp_path / "measured.html"
    page.write_text(html.replace("</body>", f"{_RECTS}\n</body>"), encoding="utf-8")
    dom = chromium(browser, page, tmp_path / "profile", "--dump-dom")
    title = re.search(r"<title>(.*?)</title>", dom, re.DOTALL)
    assert title is not None, dom[:500]
    measured = json.loads(title[1].replace("&quot;", '"'))
    return [(name.split()[-1], (round(x), round(y), round(x + w), round(y + h)))
            for name, x, y, w, h in measured]


def difference(screen: Image.Image, box: tuple[int, int, int, int],
               thumbnail: Image.Image) -> float:
    """Mean difference (0…255) between a box of the screen and the thumbnail drawn at its
    size, a few pixels in from the edges (rounded corners, anti-aliasing)."""
    inset = 4
    left, top, right, bottom = box
    shown = screen.crop((left + inset, top + inset, right - inset, bottom - inset))
    drawn = thumbnail.resize((right - left, bottom - top), Image.Resampling.BILINEAR).crop(
        (inset, inset, right - left - inset, bottom - top - inset))
    return sum(ImageStat.Stat(ImageChops.difference(shown, drawn)).mean) / 3


def test_a_browser_shows_every_image_in_its_place(strip: PreviewRun, tmp_path: Path) -> None:
    browser = _chromium()
    html = strip.html
    embedded = {css: open_thumbnail(data) for css, (_, data) in thumbnails(html).items()}
    assert embedded["p0"].getpixel((2, 2)) == pytest.approx(PHOTO_COLOR, abs=6)
    placed = boxes(browser, html, tmp_path)
    assert [css for css, _ in placed] == ["p1", "p2", "p3", "p4", "p5", "p6",  # the grid
                                          "p0", "p1", "p2", "p3", "p3",
                                          "p0", "p4", "p5", "p6", "p6"]
    assert all(0 <= left < right <= WINDOW[0] and 0 <= top < bottom <= WINDOW[1]
               for _, (left, top, right, bottom) in placed), placed
    shown = screenshot(browser, strip.out / "report.html", tmp_path)
    blank_page = tmp_path / "blank.html"  # the same page with its pictures left out
    blank_page.write_text(re.sub(r'url\("data:[^"]*"\)', "none", html), encoding="utf-8")
    blank = screenshot(browser, blank_page, tmp_path)
    for css, box in placed:
        assert difference(shown, box, embedded[css]) < 4, (css, box)  # swapped: ~10
        assert difference(blank, box, embedded[css]) > 25, (css, box)  # the check can tell


# --- driven over the DevTools protocol --------------------------------------------------------

_BOX = """(() => {
  const picture = document.querySelector(%s);
  picture.scrollIntoView({block: "center"});
  const r = picture.getBoundingClientRect();
  return {x: r.x + r.width / 2, y: r.y + r.height / 2, link: picture.closest("a").href};
})()"""

_LOADED = """({href: location.href, type: document.contentType, images: document.images.length,
  width: document.images[0] && document.images[0].naturalWidth,
  height: document.images[0] && document.images[0].naturalHeight,
  complete: document.images[0] && document.images[0].complete})"""


def test_clicking_a_thumbnail_opens_the_full_size_image(strip: PreviewRun,
                                                        tmp_path: Path) -> None:
    browser = _chromium()
    steps = json.loads((strip.out / "manifest.json").read_text())["steps"]
    report = (strip.out / "report.html").as_uri()
    targets = [  # an intermediate step in the grid, an output in its filmstrip
        ('"#grid tbody tr:nth-child(1) td:nth-child(3) .pic"', steps[1]["image"]),
        ('"#v2 li.out .pic"', steps[5]["output"])]
    assert targets[0][1] == "steps/tone=dawn/sign.png"
    with DevTools(browser, tmp_path / "profile", (1280, 900)) as tools:
        for selector, image in targets:
            tools.open(report)
            place = tools.evaluate(_BOX % selector)
            assert place["link"] == f"{strip.out.as_uri()}/{quote(image)}"
            tools.events.clear()
            tools.click(place["x"], place["y"])
            navigated = tools.wait_for("Page.frameNavigated",
                                       lambda p: "parentId" not in p["frame"])
            assert navigated["params"]["frame"]["url"] == place["link"]
            tools.wait_for("Page.loadEventFired", lambda _: True)
            loaded = tools.evaluate(_LOADED)
            with Image.open(strip.out / image) as full:
                size = full.size
            assert {k: v for k, v in loaded.items() if k != "href"} == {
                "type": "image/png", "images": 1, "width": size[0], "height": size[1],
                "complete": True}
            assert loaded["href"] == place["link"]


def test_a_hostile_prompt_is_text_in_the_browser(tmp_path: Path) -> None:
    browser = _chromium()
    run = preview_run(tmp_path / "hostile", HOSTILE)
    assert run.code == 1, run.stderr
    with DevTools(browser, tmp_path / "profile", (1280, 900)) as tools:
        tools.open((run.out / "report.html").as_uri())
        found = tools.evaluate("""({
          scripts: document.scripts.length,
          bold: [...document.querySelectorAll("b")].map(b => b.closest("ul.totals") !== null),
          prompts: [...document.querySelectorAll(".prompt")].map(p => p.textContent),
          variant: document.querySelector("#v2 h2").textContent})""")
    assert found["scripts"] == 0
    assert found["bold"] == [True] * 6  # the totals' figures, nothing from the recipe
    assert "Finish calm <script>alert(1)</script>" in found["prompts"]
    assert found["variant"] == 'look=<b>bold</b> & "loud"'


_LAYOUT = """(() => {
  const box = e => { const r = e.getBoundingClientRect();
                     return [r.left, r.top, r.right, r.bottom]; };
  const lines = text => { const range = document.createRange(); range.selectNodeContents(text);
                          return new Set([...range.getClientRects()]
                                         .map(r => Math.round(r.top))).size; };
  return {
    arrows: [...document.querySelectorAll(".to")].map(a => [box(a), box(a.nextElementSibling)]),
    tops: [...document.querySelectorAll("#v1 .frame")].map(f => box(f)[1]),
    parts: [...document.querySelectorAll(".path")].flatMap(p =>
      [...p.children].filter(part => part.tagName === "SPAN")
                     .map(part => [part.textContent, lines(part.firstChild)])),
    style: [...document.querySelectorAll(".path")].map(p => {
      const s = getComputedStyle(p); return [s.overflowWrap, s.wordBreak]; }),
  };
})()"""


@pytest.mark.parametrize("width", [900, 420], ids=["wrapped", "phone"])
def test_arrows_stay_with_their_frame_and_paths_break_only_after_a_slash(
        strip: PreviewRun, tmp_path: Path, width: int) -> None:
    browser = _chromium()
    document = json.loads((strip.out / "manifest.json").read_text())
    long = "a-rather-long-folder-name-for-one-variant/and-a-longer-one-below-it/final-pic.png"
    document["steps"][2]["output"] = long  # shown in its frame, and in the output's
    page = tmp_path / "out" / "report.html"
    page.parent.mkdir()
    page.write_text(render_report(parse_manifest(document), cache=Cache(strip.cache),
                                  base=strip.out).html, encoding="utf-8")
    with DevTools(browser, tmp_path / "profile", (width, 1200)) as tools:
        tools.open(page.as_uri())
        layout = tools.evaluate(_LAYOUT)
    assert len(set(layout["tops"])) > 1  # the filmstrip wraps, so the check means something
    assert len(layout["arrows"]) == 8
    for (left, top, right, bottom), card in layout["arrows"]:
        if width > 560:  # beside the card it points at, on the same line
            assert right <= card[0] + 1
            assert card[1] <= top
            assert bottom <= card[3]
        else:  # above it
            assert bottom <= card[1] + 1
            assert card[0] <= left
            assert right <= card[2]
    parts = dict(layout["parts"])
    assert {part for part in parts if "rather" in part or "longer" in part or "pic" in part} == {
        "a-rather-long-folder-name-for-one-variant/", "and-a-longer-one-below-it/",
        "final-pic.png"}
    assert all(count == 1 for count in parts.values()), parts  # no name broken in two
    assert set(map(tuple, layout["style"])) == {("normal", "normal")}
