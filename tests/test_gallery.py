"""report.html: what a run's page shows, that it is escaped, self-contained and light, and
(in a real browser) that it shows the images."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageChops, ImageDraw, ImageStat

from kontext_pipeline.outputs._gallery import render_report
from kontext_pipeline.outputs._manifests import parse_manifest
from kontext_pipeline.outputs._thumbnails import THUMBNAIL_SIDE, THUMBNAILS
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


@pytest.fixture(scope="module")
def strip(tmp_path_factory: pytest.TempPathFactory) -> PreviewRun:
    run = preview_run(tmp_path_factory.mktemp("strip"), STRIP)
    assert run.code == 0, run.stderr
    return run


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> PreviewRun:
    run = preview_run(tmp_path_factory.mktemp("hostile"), HOSTILE)
    assert run.code == 1, run.stderr
    return run


def manifest_of(run: PreviewRun) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((run.out / "manifest.json").read_text())
    return document


def frames(html: str) -> list[str]:
    """Every frame of every filmstrip, in page order."""
    return re.findall(r'<li class="frame [^"]*"[^>]*>.*?</li>\n', html)


def section(html: str, number: int) -> str:
    start = html.index(f'<section id="v{number}">')
    return html[start:html.index("</section>", start)]


# --- what the page shows ------------------------------------------------------------------------

def test_the_run_writes_a_report_beside_the_manifest(strip: PreviewRun) -> None:
    html = strip.html
    assert html.startswith("<!DOCTYPE html>\n<html lang=\"en\">\n")
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert "<title>strip · kontext-pipeline report</title>" in html
    assert ("<ul class=\"totals\"><li><b>6</b>steps</li><li><b>0</b>cached</li>"
            "<li><b>6</b>made</li><li><b>free</b>would cost 24 credits ($0.24) on BFL</li>"
            "<li><b>0</b>failed</li>") in html
    assert "Not done" not in html
    assert [re.search(r"<h2>(.*?)</h2>", section(html, n))[1]  # type: ignore[index]
            for n in (1, 2)] == ["tone=dawn", "tone=dusk"]


def test_each_variant_is_a_filmstrip_from_inputs_through_steps_to_outputs(
        strip: PreviewRun) -> None:
    document = manifest_of(strip)
    dawn = section(strip.html, 1)
    kinds = [re.match(r'<li class="frame ([a-z ]+)"', frame)[1]  # type: ignore[index]
             for frame in frames(dawn)]
    assert kinds == ["input", "step done", "step done", "step done", "out"]
    first = frames(dawn)[1]
    record = document["steps"][0]
    assert record["variant"] == "tone=dawn"
    assert "<p class=\"prompt\">Paint the scene at dawn</p>" in first
    assert f"<dt>seed</dt><dd>{record['seed']}</dd>" in first
    assert "<dt>model</dt><dd>flux-kontext-pro</dd>" in first
    assert "<dt>cache</dt><dd>miss</dd>" in first
    assert f"<dt>time</dt><dd>{record['duration_s']:.2f} s</dd>" in first
    assert "<dt>cost</dt><dd>free (would cost 4 credits ($0.04) on BFL)</dd>" in first
    assert "<dt>from</dt><dd>photo</dd>" in first
    assert ('<dt>output</dt><dd><a href="./tone%3Ddawn/final.png">tone=dawn/final.png</a>'
            in frames(dawn)[3])
    assert "<h3>output final.png</h3>" in frames(dawn)[4]
    assert "<h3>input photo</h3><dl><dt>file</dt><dd>../photo.png</dd>" in frames(dawn)[0]


def test_a_cached_run_says_so(strip: PreviewRun, tmp_path: Path) -> None:
    copy = tmp_path / "again"
    shutil.copytree(strip.root, copy)
    again = preview_run(copy, STRIP)
    assert again.code == 0, again.stderr
    html = again.html
    assert "<li><b>6</b>cached</li><li><b>0</b>made</li><li><b>free</b></li>" in html
    assert html.count('<dt>cache</dt><dd><span class="status hit">cached</span></dd>'
                      '<dt>time</dt><dd>0.00 s</dd><dt>cost</dt><dd>free</dd>') == 6


def test_failed_and_skipped_steps_stand_in_place_with_their_reason(hostile: PreviewRun) -> None:
    html = hostile.html
    assert "<li><b>4</b>made</li>" in html  # not the failed step: it made nothing
    assert "<li class=\"bad\"><b>2</b>failed</li>" in html
    assert ('<p class="failures">Not done: <a href="#s4">look=&lt;b&gt;bold&lt;/b&gt; &amp; '
            '&quot;loud&quot; / two</a> (failed), <a href="#s5">look=&lt;b&gt;bold&lt;/b&gt; '
            '&amp; &quot;loud&quot; / three</a> (skipped)</p>') in html
    loud = frames(section(html, 2))
    assert [re.match(r'<li class="frame ([a-z ]+)"', f)[1] for f in loud] == [  # type: ignore[index]
        "input", "step done", "step failed", "step skipped"]
    failed, skipped = loud[2], loud[3]
    assert failed.startswith('<li class="frame step failed" id="s4"><div class="pic none" '
                             'style="aspect-ratio:3/2">failed</div>')
    assert re.search(r'<p class="reason">the task ended with status &#x27;Error&#x27; \(task '
                     r"[0-9a-f-]+, prompt: &#x27;Break it \[\[error\]\] &lt;b&gt;bold&lt;/b&gt; "
                     r"&amp; &quot;loud&quot;&#x27;\)</p>", failed)
    assert ('<div class="pic none" style="aspect-ratio:3/2">skipped</div>' in skipped)
    assert ("<p class=\"reason\">skipped: its input &#x27;two&#x27; did not finish</p>"
            in skipped)
    assert ("<p class=\"sum\">3 steps · 1 done · free (would cost 4 credits ($0.04) on BFL)"
            "</p>") in section(html, 2)


def test_every_text_is_escaped(hostile: PreviewRun) -> None:
    html = hostile.html
    assert "<script" not in html
    assert "<b>bold" not in html
    assert "Finish calm &lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<h2>look=&lt;b&gt;bold&lt;/b&gt; &amp; &quot;loud&quot;</h2>" in html


def test_nothing_is_fetched_from_anywhere(strip: PreviewRun, hostile: PreviewRun) -> None:
    for html in (strip.html, hostile.html):
        assert "http://" not in html
        assert "https://" not in html
        assert "<link" not in html
        assert "@import" not in html
        assert "<script" not in html
        assert "<img" not in html  # pictures are CSS backgrounds, each embedded once
        for target in re.findall(r'(?:src|href)="([^"]*)"', html):
            assert target.startswith(("./", "#")), target
        for target in re.findall(r"url\(([^)]*)\)", html):
            assert target.startswith('"data:image/webp;base64,'), target[:40]


def test_each_distinct_image_is_embedded_once_as_a_small_thumbnail(strip: PreviewRun) -> None:
    html = strip.html
    embedded = thumbnails(html)
    assert len(embedded) == 7  # the input (used by both variants) and six results
    assert len(set(embedded.values())) == 7
    for css, (mime, data) in embedded.items():
        assert mime == "image/webp"
        assert html.count(f'class="pic {css}"') >= 1
        picture = open_thumbnail(data)
        assert max(picture.size) <= THUMBNAIL_SIDE
        assert len(data) < 8_000
    assert html.count('class="pic p0"') == 2  # the input, once per variant


# --- images that cannot be shown ------------------------------------------------------------

def test_an_image_gone_from_the_cache_is_a_placeholder(strip: PreviewRun, tmp_path: Path) -> None:
    document = manifest_of(strip)
    gone = document["steps"][1]["output_sha256"]
    cache_dir = tmp_path / "cache"
    shutil.copytree(strip.cache, cache_dir)
    cache = Cache(cache_dir)
    cache.object_path(gone).unlink()
    page = render_report(parse_manifest(document), cache=cache, base=strip.out)
    assert page.problems == (f"the image of tone=dawn / sign is not in the cache "
                             f"(object {gone[:12]})",)
    assert page.shown == 6
    assert ('<div class="pic none" style="aspect-ratio:3/2">the image of tone=dawn / sign is '
            f"not in the cache (object {gone[:12]})</div><h3><span class=\"idx\">2.</span> sign"
            in page.html)


def test_a_damaged_cache_object_is_a_placeholder(strip: PreviewRun, tmp_path: Path) -> None:
    document = manifest_of(strip)
    damaged = document["steps"][0]["output_sha256"]
    cache_dir = tmp_path / "cache"
    shutil.copytree(strip.cache, cache_dir)
    shutil.rmtree(cache_dir / "v1" / THUMBNAILS)  # a kept thumbnail is trusted like an entry
    cache = Cache(cache_dir)
    cache.object_path(damaged).write_bytes(b"not the image")
    page = render_report(parse_manifest(document), cache=cache, base=strip.out)
    assert page.problems == (f"the image of tone=dawn / paint is damaged in the cache "
                             f"(object {damaged[:12]})",)


def test_a_second_report_decodes_no_image_of_the_cache_again(strip: PreviewRun,
                                                            tmp_path: Path) -> None:
    document = manifest_of(strip)
    cache_dir = tmp_path / "cache"
    shutil.copytree(strip.cache, cache_dir)
    kept = sorted((cache_dir / "v1" / THUMBNAILS).glob("*/*.json"))
    assert len(kept) == len({s["output_sha256"] for s in document["steps"]})  # made by the run
    cache = Cache(cache_dir)
    for step in document["steps"]:  # bytes no thumbnail could be made of: not read again
        path = cache.object_path(step["output_sha256"])
        path.write_bytes(b"x" * path.stat().st_size)
    page = render_report(parse_manifest(document), cache=cache, base=strip.out)
    assert page.problems == ()
    assert page.html == (strip.out / "report.html").read_text()


def test_an_input_changed_or_gone_since_the_run_is_a_placeholder(strip: PreviewRun,
                                                                 tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(strip.root, copy)
    manifest = parse_manifest(manifest_of(strip))
    cache = Cache(strip.cache)
    Image.new("RGB", (64, 48), (250, 0, 0)).save(copy / "photo.png")
    changed = render_report(manifest, cache=cache, base=copy / "out")
    assert changed.problems == (f"input image ../photo.png (photo) has changed since the run: "
                                f"{copy / 'out' / '..' / 'photo.png'}",)
    assert changed.html.count("input image ../photo.png (photo) has changed since") == 2
    (copy / "photo.png").unlink()
    gone = render_report(manifest, cache=cache, base=copy / "out")
    assert gone.problems == (f"input image ../photo.png (photo) is missing: "
                             f"{copy / 'out' / '..' / 'photo.png'}",)


def test_a_manifest_without_images_shows_the_steps_only(strip: PreviewRun) -> None:
    document = manifest_of(strip)
    for record in document["steps"]:
        del record["images"]
    page = render_report(parse_manifest(document), cache=Cache(strip.cache), base=strip.out)
    assert page.problems == ()
    assert page.shown == 6
    assert '<li class="frame input">' not in page.html
    assert "<dt>from</dt><dd>photo</dd>" not in page.html
    assert "<dt>from</dt><dd>paint</dd>" not in page.html


def test_only_plainly_relative_outputs_are_linked(strip: PreviewRun) -> None:
    document = manifest_of(strip)
    outputs = ["//elsewhere.example/x.png", "javascript:alert(1)", "../up.png", "/abs.png",
               'a"b/<c>.png']
    for record, output in zip(document["steps"][:5], outputs, strict=True):
        record["output"] = output
    html = render_report(parse_manifest(document), cache=Cache(strip.cache),
                         base=strip.out).html
    links = re.findall(r'<a href="([^"]*)">', html)
    assert "./javascript%3Aalert%281%29" in links
    assert "./a%22b/%3Cc%3E.png" in links
    assert "<dd>//elsewhere.example/x.png</dd>" in html
    assert "<dd>../up.png</dd>" in html
    assert "<dd>/abs.png</dd>" in html
    assert all(link.startswith(("./", "#")) for link in links)


# --- a larger run stays light -----------------------------------------------------------------

def _picture(base: Image.Image, number: int) -> bytes:
    image = base.copy()
    draw = ImageDraw.Draw(image)
    draw.rectangle((40 + number % 200, 60, 300, 220), fill=(200, number % 256, 40))
    draw.text((20, 430), f"image {number}", fill="white")
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def test_a_hundred_variant_report_stays_light(tmp_path: Path) -> None:
    variants, steps = 100, 3
    noise = Image.effect_noise((640, 480), 40).convert("RGB")
    base = Image.blend(Image.linear_gradient("L").resize((640, 480)).convert("RGB"), noise, 0.3)
    cache = Cache(tmp_path / "cache")
    photo = _picture(base, 9999)
    (tmp_path / "photo.jpg").write_bytes(photo)
    records = []
    source_bytes = 0
    for variant in range(variants):
        previous = [hashlib.sha256(photo).hexdigest()]
        for step in range(steps):
            data = _picture(base, variant * steps + step)
            source_bytes += len(data)
            digest = hashlib.sha256(data).hexdigest()
            path = cache.object_path(digest)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            images = ([{"name": "photo", "source": "input", "path": "photo.jpg"}] if step == 0
                      else [{"name": f"s{step - 1}", "source": "step"}])
            records.append({
                "variant": f"n={variant}", "step": f"s{step}", "model": "flux-kontext-pro",
                "prompt": f"Edit {variant} step {step} " + "with care " * 20, "seed": variant,
                "params": {"output_format": "jpeg"}, "inputs_sha256": previous,
                "output_sha256": digest, "output": None, "cache": "miss", "credits": 4,
                "duration_s": 1.5, "status": "done", "error": None, "images": images})
            previous = [digest]
    document = {"pipeline": "big", "spec_sha256": "0" * 64, "provider": "bfl",
                "totals": {"steps": 300, "cache_hits": 0, "calls": 300, "credits": 1200,
                           "failed": 0},
                "steps": records}
    page = render_report(parse_manifest(document), cache=cache, base=tmp_path)
    assert page.problems == ()
    assert page.shown == variants * steps + 1
    embedded = thumbnails(page.html)
    assert len(embedded) == variants * steps + 1  # the shared input once
    sizes = sorted(len(data) for _, data in embedded.values())
    assert sizes[-1] < 12_000  # every thumbnail a few kilobytes…
    assert sum(sizes) < source_bytes / 8  # …far less than the images themselves
    size = len(page.html.encode())
    assert size < sum(sizes) * 4 / 3 + 2_000 * variants * steps  # base64 + ~2 kB of text a step
    assert "<li><b>300</b>steps</li>" in page.html
    assert "<li><b>1200</b>credits ($12.00)</li>" in page.html


# --- in a real browser ------------------------------------------------------------------------

WINDOW = (1600, 1400)  # wide and tall enough for the whole two-variant page

_RECTS = """<script>
document.title = JSON.stringify([...document.querySelectorAll(".pic")].map(e => {
  const r = e.getBoundingClientRect();
  return [e.className, r.x, r.y, r.width, r.height];
}));
</script>"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("chromium is not installed (Debian: apt-get install chromium), so the report "
                "cannot be looked at in a browser")


def chromium(browser: str, page: Path, profile: Path, *options: str) -> str:
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--force-device-scale-factor=1", "--force-color-profile=srgb",
               f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
               *options, page.as_uri()]
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
    assert [css for css, _ in placed] == ["p0", "p1", "p2", "p3", "p3",
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
