"""report.html: what a run's page shows, that it is escaped, self-contained and light, that its
thumbnails link to the full-size images, and a matrix's side-by-side grid. (The images it cannot
take from the cache: test_report_fallback.py; in a real browser: test_report_browser.py.)"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from PIL import Image, ImageDraw

from kontext_pipeline.outputs._html_report import Background, render_report
from kontext_pipeline.outputs._manifest import parse_manifest
from kontext_pipeline.outputs._thumbnails import THUMBNAIL_SIDE
from kontext_pipeline.store._cache import Cache
from tests.report_helpers import (
    HOSTILE,
    MATRIX,
    STRIP,
    Element,
    PreviewRun,
    open_thumbnail,
    parse_html,
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


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> PreviewRun:
    run = preview_run(tmp_path_factory.mktemp("matrix"), MATRIX)
    assert run.code == 0, run.stderr
    return run


def manifest_of(run: PreviewRun) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((run.out / "manifest.json").read_text())
    return document


def frames(section: Element) -> list[Element]:
    """The frames of a variant's filmstrip, in order."""
    return section.one("ol", "strip").all("li", "frame")


def kind(frame: Element) -> str:
    return " ".join(c for c in frame.classes if c != "frame")


def thumbnail_link(place: Element) -> str | None:
    """Where the thumbnail of a frame or grid cell links to (None: not linked)."""
    picture = place.one("div", "pic")
    links = [a for a in place.all("a", "full") if picture in a.all("div")]
    return links[0].attrs["href"] if links else None


# --- what the page shows ------------------------------------------------------------------------

def test_the_run_writes_a_report_beside_the_manifest(strip: PreviewRun) -> None:
    html = strip.html
    assert html.startswith("<!DOCTYPE html>\n<html lang=\"en\">\n")
    page = parse_html(html)
    assert [m.attrs for m in page.all("meta")] == [
        {"charset": "utf-8"},
        {"name": "viewport", "content": "width=device-width, initial-scale=1"}]
    assert page.one("title").text == "strip · kontext-pipeline report"
    totals = page.one("ul", "totals").all("li")
    seconds = sum(step["duration_s"] for step in manifest_of(strip)["steps"])
    assert [(li.one("b").text, li.text) for li in totals] == [
        ("6", "6steps"), ("0", "0cached"), ("6", "6made"),
        ("free", "freewould cost 24 credits ($0.24) on BFL"), ("0", "0failed"),
        (f"{seconds:.1f} s", f"{seconds:.1f} sin steps")]
    assert [li.classes for li in totals] == [[]] * 6
    assert page.all("p", "failures") == []
    assert [page.by_id(f"v{n}").one("h2").text for n in (1, 2)] == ["tone=dawn", "tone=dusk"]


def test_each_variant_is_a_filmstrip_from_inputs_through_steps_to_outputs(
        strip: PreviewRun) -> None:
    document = manifest_of(strip)
    dawn = frames(parse_html(strip.html).by_id("v1"))
    assert [kind(f) for f in dawn] == ["input", "step done", "step done", "step done", "out"]
    first = dawn[1]
    record = document["steps"][0]
    assert record["variant"] == "tone=dawn"
    assert first.attrs["id"] == "s0"
    assert first.one("h3").text == "1. paint done"
    assert first.one("p", "prompt").text == "Paint the scene at dawn"
    assert first.facts() == {
        "model": "flux-kontext-pro", "seed": str(record["seed"]), "cache": "miss",
        "time": f"{record['duration_s']:.2f} s",
        "cost": "free (would cost 4 credits ($0.04) on BFL)", "params": "png · tolerance 2",
        "from": "photo"}
    assert dawn[2].facts()["from"] == "paint"
    assert dawn[3].facts()["output"] == "tone=dawn/final.png"
    assert [a.attrs["href"] for a in dawn[3].one("dl").all("a")] == ["./tone%3Ddawn/final.png"]
    assert dawn[4].one("h3").text == "output final.png"
    assert dawn[4].facts() == {"file": "tone=dawn/final.png", "from": "finish"}
    assert dawn[0].one("h3").text == "input photo"
    assert dawn[0].facts() == {"file": "../photo.png"}
    assert dawn[0].all("a") == []  # outside --out: shown, not linked


def test_arrows_go_with_the_frame_they_point_at(strip: PreviewRun) -> None:
    """An arrow is the first thing in the frame it points at (never an item of its own that
    could wrap onto a line alone), drawn by CSS, hidden from screen readers."""
    for number in (1, 2):
        strip_list = parse_html(strip.html).by_id(f"v{number}").one("ol", "strip")
        assert all(isinstance(c, str) or c.tag == "li" for c in strip_list.children)
        items = frames(parse_html(strip.html).by_id(f"v{number}"))
        arrows = [[c for c in f.children if isinstance(c, Element) and "to" in c.classes]
                  for f in items]
        assert [len(a) for a in arrows] == [0, 1, 1, 1, 1]
        for frame, found in zip(items[1:], arrows[1:], strict=True):
            assert frame.children[0] is found[0]
            assert found[0].attrs == {"class": "to", "aria-hidden": "true"}
            assert found[0].text == ""


def test_paths_break_only_after_a_slash(strip: PreviewRun) -> None:
    page = parse_html(strip.html)
    paths = page.all("span", "path")
    assert len(paths) == 2 * 3  # per variant: the input, the step's output, the output frame
    for path in paths:  # each name unbreakable, a break allowed after each slash
        tags = [c.tag if isinstance(c, Element) else c for c in path.children]
        assert tags == ["span", "wbr"] * (len(tags) // 2) + ["span"]
        texts = [part.text for part in path.all("span")]
        assert all(part.children == [text] for part, text in zip(path.all("span"), texts,
                                                                  strict=True))
        assert all(text.endswith("/") for text in texts[:-1])
        assert all("/" not in text.rstrip("/") for text in texts)
    assert [p.text for p in paths[:3]] == ["../photo.png", "tone=dawn/final.png",
                                           "tone=dawn/final.png"]
    style = page.one("style").text
    assert ".path{overflow-wrap:normal;word-break:normal}\n.path>span{white-space:nowrap}" in style
    body = re.search(r"\nbody\{([^}]*)\}", style)
    assert body is not None
    assert "overflow-wrap" not in body[1]  # not the whole page: only where a word may be long


def test_every_thumbnail_links_to_its_full_size_image(strip: PreviewRun) -> None:
    document = manifest_of(strip)
    page = parse_html(strip.html)
    for number, variant in enumerate(("tone=dawn", "tone=dusk"), 1):
        items = frames(page.by_id(f"v{number}"))
        records = [s for s in document["steps"] if s["variant"] == variant]
        assert [thumbnail_link(f) for f in items] == [
            None, *(f"./{quote(s['image'])}" for s in records),
            f"./{quote(records[2]['output'])}"]
    images = [s["image"] for s in document["steps"]]
    assert images == ["steps/tone=dawn/paint.png", "steps/tone=dawn/sign.png",
                      "tone=dawn/final.png", "steps/tone=dusk/paint.png",
                      "steps/tone=dusk/sign.png", "tone=dusk/final.png"]
    cache = Cache(strip.cache)
    for record in document["steps"]:
        with Image.open(strip.out / record["image"]) as full, Image.open(
                cache.object_path(record["output_sha256"])) as generated:
            assert full.size == generated.size  # the full size, not a thumbnail
            assert max(full.size) > THUMBNAIL_SIDE


def test_a_step_without_an_image_field_links_its_output(strip: PreviewRun) -> None:
    document = manifest_of(strip)
    for record in document["steps"]:
        del record["image"]  # a manifest written before steps recorded it
    page = render_report(parse_manifest(document), cache=Cache(strip.cache), base=strip.out)
    dawn = frames(parse_html(page.html).by_id("v1"))
    assert [thumbnail_link(f) for f in dawn] == [None, None, None, "./tone%3Ddawn/final.png",
                                                 "./tone%3Ddawn/final.png"]


def test_a_cached_run_says_so(strip: PreviewRun, tmp_path: Path) -> None:
    copy = tmp_path / "again"
    shutil.copytree(strip.root, copy)
    again = preview_run(copy, STRIP)
    assert again.code == 0, again.stderr
    page = parse_html(again.html)
    assert [li.text for li in page.one("ul", "totals").all("li")][1:4] == [
        "6cached", "0made", "free"]
    steps = page.all("li", "step")
    assert len(steps) == 6
    for step in steps:
        cached = step.one("dl").one("span", "status")
        assert (cached.classes, cached.text) == (["status", "hit"], "cached")
        assert {k: step.facts()[k] for k in ("cache", "time", "cost")} == {
            "cache": "cached", "time": "0.00 s", "cost": "free"}


def test_failed_and_skipped_steps_stand_in_place_with_their_reason(hostile: PreviewRun) -> None:
    page = parse_html(hostile.html)
    totals = page.one("ul", "totals").all("li")
    assert totals[2].text == "4made"  # not the failed step: it made nothing
    assert (totals[4].classes, totals[4].text) == (["bad"], "2failed")
    failures = page.one("p", "failures")
    loud = 'look=<b>bold</b> & "loud"'
    assert " ".join(failures.text.split()) == (f"Not done: {loud} / two (failed), {loud} / "
                                               "three (skipped)")
    assert [(a.attrs["href"], a.text) for a in failures.all("a")] == [
        ("#s4", f"{loud} / two"), ("#s5", f"{loud} / three")]
    items = frames(page.by_id("v2"))
    assert [kind(f) for f in items] == ["input", "step done", "step failed", "step skipped"]
    failed, skipped = items[2], items[3]
    assert failed.attrs["id"] == "s4"
    placeholder = failed.one("div", "pic")
    assert (placeholder.classes, placeholder.attrs["style"], placeholder.text) == (
        ["pic", "none"], "aspect-ratio:3/2", "failed")
    assert re.fullmatch(r"the task ended with status 'Error' \(task [0-9a-f-]+, prompt: 'Break "
                        r"it \[\[error\]\] <b>bold</b> & \"loud\"'\)",
                        failed.one("p", "reason").text)
    assert skipped.one("div", "pic").text == "skipped"
    assert skipped.one("p", "reason").text == "skipped: its input 'two' did not finish"
    assert thumbnail_link(failed) is None
    assert page.by_id("v2").one("p", "sum").text == (
        "3 steps · 1 done · free (would cost 4 credits ($0.04) on BFL)")


def test_every_text_is_escaped(hostile: PreviewRun) -> None:
    html = hostile.html
    assert "<script" not in html
    assert "<b>bold" not in html
    assert "Finish calm &lt;script&gt;alert(1)&lt;/script&gt;" in html
    page = parse_html(html)
    assert page.all("script") == []
    assert page.all("b") == page.one("ul", "totals").all("b")  # none from the recipe
    prompts = [p.text for p in page.all("p", "prompt")]
    assert "Finish calm <script>alert(1)</script>" in prompts
    assert page.by_id("v2").one("h2").text == 'look=<b>bold</b> & "loud"'
    row = page.one("table", "grid").one("tbody").all("tr")[1]
    assert row.one("th").text == 'look=<b>bold</b> & "loud"'


def test_nothing_is_fetched_from_anywhere(strip: PreviewRun, hostile: PreviewRun) -> None:
    for html in (strip.html, hostile.html):
        page = parse_html(html)
        assert "http://" not in html
        assert "https://" not in html
        assert page.all("link") == page.all("script") == page.all("img") == []
        assert "@import" not in html  # pictures are CSS backgrounds, each embedded once
        targets = [e.attrs[name] for e in page.elements() for name in ("src", "href")
                   if name in e.attrs]
        assert targets
        for target in targets:
            assert target.startswith(("./", "#")), target
        style = page.one("style").text
        for target in re.findall(r"url\(([^)]*)\)", style):
            assert target.startswith('"data:image/webp;base64,'), target[:40]


def test_each_distinct_image_is_embedded_once_as_a_small_thumbnail(strip: PreviewRun) -> None:
    html = strip.html
    embedded = thumbnails(html)
    assert len(embedded) == 7  # the input (used by both variants) and six results
    assert len(set(embedded.values())) == 7
    page = parse_html(html)
    for css, (mime, data) in embedded.items():
        assert mime == "image/webp"
        assert page.all("div", css)
        picture = open_thumbnail(data)
        assert max(picture.size) <= THUMBNAIL_SIDE
        assert len(data) < 8_000
    assert len(page.all("div", "p0")) == 2  # the input, once per variant
    assert len(page.all("div", "p3")) == 3  # the grid, the last step, the output


def test_only_a_checked_data_uri_reaches_the_page() -> None:
    good = "data:image/webp;base64,UklGRg=="
    assert Background("p12", good).uri == good
    refused = {
        "javascript:alert(1)": "not a base64 data: URI of a WebP or JPEG image: "
                               "'javascript:alert(1)'",
        'data:image/webp;base64,AA==")}</style><script>': "not a base64 data: URI of a WebP "
                                                          "or JPEG image: 'data:image/webp;"
                                                          "base64,AA==\")}</style><s'",
        "data:image/svg+xml;base64,PHN2Zz4=": "not a base64 data: URI of a WebP or JPEG image: "
                                              "'data:image/svg+xml;base64,PHN2Zz4='",
        "data:image/webp;base64,A": "not a base64 data: URI of a WebP or JPEG image: "
                                    "'data:image/webp;base64,A'"}
    for uri, message in refused.items():
        with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
            Background("p0", uri)
    with pytest.raises(ValueError, match=r"^a thumbnail's class is p<number>, not 'p0\{x'$"):
        Background("p0{x", good)


# --- a matrix: the grid -------------------------------------------------------------------

def test_a_matrix_report_starts_with_a_grid_of_variants_by_steps(matrix: PreviewRun) -> None:
    document = manifest_of(matrix)
    page = parse_html(matrix.html)
    grid = page.by_id("grid")
    body = page.one("body")
    sections = [e for e in body.children if isinstance(e, Element) and e.tag == "section"]
    assert sections[0] is grid  # above the filmstrips
    assert [s.attrs["id"] for s in sections] == ["grid", "v1", "v2", "v3", "v4"]
    table = grid.one("table", "grid")
    assert [th.text for th in table.one("thead").all("th")] == ["variant", "tint", "glow"]
    rows = table.one("tbody").all("tr")
    variants = ["light=dawn,ink=red", "light=dawn,ink=blue", "light=dusk,ink=red",
                "light=dusk,ink=blue"]
    assert [(r.one("th").text, r.one("th").one("a").attrs["href"]) for r in rows] == [
        (variant, f"#v{n}") for n, variant in enumerate(variants, 1)]
    embedded = thumbnails(matrix.html)
    for number, (row, variant) in enumerate(zip(rows, variants, strict=True), 1):
        cells = row.all("td")
        records = [s for s in document["steps"] if s["variant"] == variant]
        assert len(cells) == len(records) == 2
        strip_steps = [f for f in frames(page.by_id(f"v{number}")) if "step" in f.classes]
        for cell, record, frame in zip(cells, records, strip_steps, strict=True):
            assert thumbnail_link(cell) == f"./{quote(record['image'])}"
            assert (matrix.out / record["image"]).is_file()
            picture = cell.one("div", "pic")
            css = picture.classes[1]
            assert css in embedded
            assert frame.one("div", "pic").classes == picture.classes  # the same image
            assert picture.attrs["aria-label"] == f"{variant} / {record['step']}"
    # the tint depends on the ink only: two tints (each cached once), four glows
    assert len({cell.one("div", "pic").classes[1] for cell in table.all("td")}) == 6


def test_a_single_variant_has_no_grid(strip: PreviewRun) -> None:
    document = manifest_of(strip)
    document["steps"] = [s for s in document["steps"] if s["variant"] == "tone=dawn"]
    page = render_report(parse_manifest(document), cache=Cache(strip.cache), base=strip.out)
    assert parse_html(page.html).all("table") == []


def test_a_grid_cell_of_a_step_not_done_links_to_its_frame(hostile: PreviewRun) -> None:
    page = parse_html(hostile.html)
    rows = page.one("table", "grid").one("tbody").all("tr")
    cells = rows[1].all("td")
    assert [c.classes for c in cells] == [["done"], ["failed"], ["skipped"]]
    assert [thumbnail_link(c) for c in cells[1:]] == ["#s4", "#s5"]
    assert [c.one("div", "pic").text for c in cells[1:]] == ["failed", "skipped"]


# --- links ----------------------------------------------------------------------------------

def test_only_plainly_relative_outputs_are_linked(strip: PreviewRun) -> None:
    document = manifest_of(strip)
    outputs = ["//elsewhere.example/x.png", "javascript:alert(1)", "../up.png", "/abs.png",
               'a"b/<c>.png', "a\\..\\..\\up.png"]
    for record, output in zip(document["steps"], outputs, strict=True):
        record["output"] = output
        record["image"] = output
    page = parse_html(render_report(parse_manifest(document), cache=Cache(strip.cache),
                                    base=strip.out).html)
    links = [a.attrs["href"] for a in page.all("a") if not a.attrs["href"].startswith("#")]
    assert sorted(set(links)) == ["./a%22b/%3Cc%3E.png", "./javascript%3Aalert%281%29"]
    shown = [step.facts()["output"] for step in page.all("li", "step")]
    assert shown == outputs
    for step in page.all("li", "step"):
        output = step.facts()["output"]
        linked = [a.attrs["href"] for a in step.all("a")]
        if output in ('a"b/<c>.png', "javascript:alert(1)"):
            assert linked == [f"./{quote(output)}"] * 2  # the thumbnail and the file
        else:
            assert linked == []


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
                "duration_s": 1.5, "status": "done", "error": None, "images": images,
                "image": f"steps/n={variant}/s{step}.jpg"})
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
    # base64, then ~2 kB of text a step: its frame in the filmstrip and its cell in the grid
    assert size < sum(sizes) * 4 / 3 + 2_000 * variants * steps
    parsed = parse_html(page.html)
    assert len(parsed.one("table", "grid").one("tbody").all("tr")) == variants
    totals = [li.text for li in parsed.one("ul", "totals").all("li")]
    assert totals[0] == "300steps"
    assert totals[3] == "1200credits ($12.00)"
