"""report.html's images that the cache cannot give: taken from the files the run exported into
``--out`` when they are still as written, else a placeholder that says why; the inputs as they
are now."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from kontext_pipeline.outputs._html_report import Page, render_report
from kontext_pipeline.outputs._manifest import parse_manifest
from kontext_pipeline.outputs._thumbnails import THUMBNAILS
from kontext_pipeline.store._cache import Cache
from tests.conftest import RunCli
from tests.report_helpers import STRIP, PreviewRun, parse_html, preview_run


@pytest.fixture(scope="module")
def strip(tmp_path_factory: pytest.TempPathFactory) -> PreviewRun:
    run = preview_run(tmp_path_factory.mktemp("strip"), STRIP)
    assert run.code == 0, run.stderr
    return run


@pytest.fixture
def copy(strip: PreviewRun, tmp_path: Path) -> PreviewRun:
    """The run, copied (recipe, photo, cache, outputs) so that a test may damage it."""
    shutil.copytree(strip.root, tmp_path / "run", symlinks=True)
    return PreviewRun(tmp_path / "run", strip.code, strip.stdout, strip.stderr)


def steps_of(run: PreviewRun) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = json.loads((run.out / "manifest.json").read_text())["steps"]
    return steps


def report(run: PreviewRun, document: dict[str, Any] | None = None) -> tuple[Page, str]:
    """The report of ``run`` as it is now (of its manifest, or of ``document`` in its place):
    the page, and its HTML."""
    if document is None:
        document = json.loads((run.out / "manifest.json").read_text())
    page = render_report(parse_manifest(document), cache=Cache(run.cache), base=run.out)
    return page, page.html


def placeholder(html: str, anchor: str) -> str:
    """The text of the placeholder in the frame ``anchor`` (it has no thumbnail)."""
    frame = parse_html(html).by_id(anchor)
    return frame.one("div", "none").text


# --- from the exported files --------------------------------------------------------------

def test_an_image_gone_from_the_cache_is_shown_from_its_exported_file(copy: PreviewRun) -> None:
    sign = steps_of(copy)[1]
    assert sign["image"] == "steps/tone=dawn/sign.png"  # an intermediate step's
    Cache(copy.cache).object_path(sign["output_sha256"]).unlink()
    page, html = report(copy)
    assert page.problems == ()
    assert page.from_files == ("steps/tone=dawn/sign.png",)
    assert page.shown == 7
    assert html == copy.html  # the very thumbnail: the file has the generated pixels


def test_the_report_command_falls_back_to_the_exported_files_when_the_cache_is_emptied(
        run_cli: RunCli, copy: PreviewRun) -> None:
    cleared = run_cli("cache", "clear", "--yes", "--cache-dir", str(copy.cache))
    assert cleared.exit_code == 0, cleared.output
    assert not list((copy.cache / "v1").rglob("*.png"))
    written = copy.html
    (copy.out / "report.html").unlink()
    result = run_cli("report", str(copy.out), "--cache-dir", str(copy.cache))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{copy.out / 'report.html'}: 2 variants, 7 images\n"
    assert result.stderr == (
        f"note: the cache in {copy.cache} lacks 6 of this run's images (removed by `cache gc` "
        "or `cache clear`, or the run used another --cache-dir); the report shows the files "
        f"the run exported into {copy.out} instead\n")
    assert copy.html == written
    page = parse_html(copy.html)
    assert page.all("div", "none") == []


def test_a_damaged_cache_object_falls_back_to_the_exported_file(copy: PreviewRun) -> None:
    paint = steps_of(copy)[0]
    shutil.rmtree(copy.cache / "v1" / THUMBNAILS)  # a kept thumbnail is trusted like an entry
    Cache(copy.cache).object_path(paint["output_sha256"]).write_bytes(b"not the image")
    page, html = report(copy)
    assert page.problems == ()
    assert page.from_files == ("steps/tone=dawn/paint.png",)
    (copy.out / paint["image"]).unlink()
    page, html = report(copy)
    problem = (f"the image of tone=dawn / paint is damaged in the cache (object "
               f"{paint['output_sha256'][:12]}), and its exported file steps/tone=dawn/paint.png "
               "is missing")
    assert page.problems == (problem,)
    assert placeholder(html, "s0") == problem


def test_an_image_gone_from_the_cache_and_from_out_is_a_placeholder(copy: PreviewRun) -> None:
    sign = steps_of(copy)[1]
    Cache(copy.cache).object_path(sign["output_sha256"]).unlink()
    (copy.out / sign["image"]).unlink()
    page, html = report(copy)
    problem = (f"the image of tone=dawn / sign is not in the cache (object "
               f"{sign['output_sha256'][:12]}), and its exported file steps/tone=dawn/sign.png "
               "is missing")
    assert page.problems == (problem,)
    assert page.from_files == ()
    assert page.shown == 6
    assert placeholder(html, "s1") == problem
    assert parse_html(html).by_id("s1").one("h3").text == "2. sign done"
    cell = parse_html(html).one("table", "grid").one("tbody").all("tr")[0].all("td")[1]
    assert cell.one("div", "pic").text == "not shown"  # the frame it links to says why
    assert cell.one("a").attrs["href"] == "#s1"


@pytest.mark.parametrize("step", [1, 2], ids=["intermediate", "output"])
def test_an_exported_file_changed_since_the_run_is_not_shown(copy: PreviewRun,
                                                             step: int) -> None:
    """Saved again with the same pixels but without the provenance the export inserted: not
    the file the run wrote (the output's recorded sha256, or the intermediate's generated
    image once the provenance is taken out)."""
    record = steps_of(copy)[step]
    Cache(copy.cache).object_path(record["output_sha256"]).unlink()
    exported = copy.out / record["image"]
    with Image.open(exported) as image:
        image.save(exported, "PNG")
    page, _ = report(copy)
    assert page.problems == (
        f"the image of tone=dawn / {record['step']} is not in the cache (object "
        f"{record['output_sha256'][:12]}), and its exported file {record['image']} has "
        "changed since the run",)


def test_an_exported_file_of_another_step_is_not_shown(copy: PreviewRun) -> None:
    paint, sign = steps_of(copy)[:2]
    Cache(copy.cache).object_path(sign["output_sha256"]).unlink()
    shutil.copyfile(copy.out / paint["image"], copy.out / sign["image"])  # provenance intact
    page, _ = report(copy)
    assert page.problems == (
        f"the image of tone=dawn / sign is not in the cache (object "
        f"{sign['output_sha256'][:12]}), and its exported file steps/tone=dawn/sign.png has "
        "changed since the run",)


def test_a_link_in_place_of_an_exported_file_is_not_followed(copy: PreviewRun,
                                                             tmp_path: Path) -> None:
    sign = steps_of(copy)[1]
    Cache(copy.cache).object_path(sign["output_sha256"]).unlink()
    exported = copy.out / sign["image"]
    outside = tmp_path / "elsewhere.png"
    shutil.move(exported, outside)
    os.symlink(outside, exported)
    page, _ = report(copy)
    start = (f"the image of tone=dawn / sign is not in the cache (object "
             f"{sign['output_sha256'][:12]}), and its exported file steps/tone=dawn/sign.png")
    assert page.problems == (f"{start} is outside {copy.out}",)
    inside = copy.out / "steps" / "kept.png"
    shutil.move(outside, inside)
    exported.unlink()
    os.symlink(inside, exported)
    page, _ = report(copy)
    assert page.problems == (f"{start} is not a file",)


def test_only_a_plainly_relative_exported_file_is_read(copy: PreviewRun) -> None:
    document = json.loads((copy.out / "manifest.json").read_text())
    sign = document["steps"][1]
    shutil.copyfile(copy.out / sign["image"], copy.root / "sign.png")  # beside --out
    sign["image"] = "../sign.png"
    Cache(copy.cache).object_path(sign["output_sha256"]).unlink()
    page, _ = report(copy, document)
    assert page.problems == (f"the image of tone=dawn / sign is not in the cache (object "
                             f"{sign['output_sha256'][:12]})",)


# --- from the cache -------------------------------------------------------------------------

def test_a_second_report_decodes_no_image_of_the_cache_again(copy: PreviewRun) -> None:
    steps = steps_of(copy)
    kept = sorted((copy.cache / "v1" / THUMBNAILS).glob("*/*.json"))
    assert len(kept) == len({s["output_sha256"] for s in steps})  # made by the run
    cache = Cache(copy.cache)
    for step in steps:  # bytes no thumbnail could be made of: not read again
        path = cache.object_path(step["output_sha256"])
        path.write_bytes(b"x" * path.stat().st_size)
    page, html = report(copy)
    assert page.problems == ()
    assert page.from_files == ()
    assert html == copy.html


# --- the inputs -----------------------------------------------------------------------------

def test_an_input_changed_or_gone_since_the_run_is_a_placeholder(copy: PreviewRun) -> None:
    Image.new("RGB", (64, 48), (250, 0, 0)).save(copy.root / "photo.png")
    changed, html = report(copy)
    photo = copy.out / ".." / "photo.png"
    problem = f"input image ../photo.png (photo) has changed since the run: {photo}"
    assert changed.problems == (problem,)
    inputs = parse_html(html).all("li", "input")
    assert [frame.one("div", "none").text for frame in inputs] == [problem] * 2
    (copy.root / "photo.png").unlink()
    gone, _ = report(copy)
    assert gone.problems == (f"input image ../photo.png (photo) is missing: {photo}",)


def test_a_manifest_without_images_shows_the_steps_only(copy: PreviewRun) -> None:
    document = json.loads((copy.out / "manifest.json").read_text())
    for record in document["steps"]:
        del record["images"]  # written before manifests recorded them
    page, html = report(copy, document)
    assert page.problems == ()
    assert page.shown == 6
    parsed = parse_html(html)
    assert parsed.all("li", "input") == []
    assert all("from" not in step.facts() for step in parsed.all("li", "step"))
