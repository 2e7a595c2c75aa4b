"""``kontext-pipeline report OUT_DIR``: rebuilds the page a run wrote; every refusal says what,
where and what to do, with the documented exit code."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import RunCli
from tests.report_helpers import STRIP, PreviewRun, preview_run


@pytest.fixture(scope="module")
def strip(tmp_path_factory: pytest.TempPathFactory) -> PreviewRun:
    run = preview_run(tmp_path_factory.mktemp("strip"), STRIP)
    assert run.code == 0, run.stderr
    return run


@pytest.fixture
def copy(strip: PreviewRun, tmp_path: Path) -> PreviewRun:
    """The run, copied (recipe, photo, cache, outputs) so that a test may damage it."""
    shutil.copytree(strip.root, tmp_path / "run")
    return PreviewRun(tmp_path / "run", strip.code, strip.stdout, strip.stderr)


def test_report_rebuilds_the_page_the_run_wrote(run_cli: RunCli, copy: PreviewRun) -> None:
    written = copy.html
    (copy.out / "report.html").unlink()
    result = run_cli("report", str(copy.out), "--cache-dir", str(copy.cache))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{copy.out / 'report.html'}: 2 variants, 7 images\n"
    assert result.stderr == ""
    assert copy.html == written


def test_report_reads_the_cache_from_the_environment(run_cli: RunCli, copy: PreviewRun) -> None:
    result = run_cli("report", str(copy.out), env={"KONTEXT_CACHE_DIR": str(copy.cache)})
    assert result.exit_code == 0, result.output
    assert result.stderr == ""


def test_images_gone_from_the_cache_are_placeholders_with_a_warning(
        run_cli: RunCli, copy: PreviewRun, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    for exported in copy.out.rglob("*.png"):  # else the report shows them (test_report_fallback)
        exported.unlink()
    result = run_cli("report", str(copy.out), "--cache-dir", str(elsewhere))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{copy.out / 'report.html'}: 2 variants, 1 image, 6 not shown\n"
    steps = json.loads((copy.out / "manifest.json").read_text())["steps"]
    assert result.stderr.splitlines() == [
        *(f"warning: the image of {s['variant']} / {s['step']} is not in the cache (object "
          f"{s['output_sha256'][:12]}), and its exported file {s['image']} is missing"
          for s in steps),
        f"warning: the cache in {elsewhere} lacks some of this run's images (removed by "
        "`cache gc` or `cache clear`, or the run used another --cache-dir), and "
        f"{copy.out} has no exported file of them as the run wrote it; the report shows "
        "placeholders for them"]
    assert copy.html.count('<div class="pic none"') == 14  # six steps, two outputs, six cells


def test_many_missing_images_are_counted_not_listed(run_cli: RunCli, copy: PreviewRun,
                                                     tmp_path: Path) -> None:
    manifest = copy.out / "manifest.json"
    document = json.loads(manifest.read_text())
    document["steps"] = [{**step, "output_sha256": hashlib.sha256(bytes([n])).hexdigest()}
                         for n, step in enumerate(document["steps"] * 2)]  # 12 missing images
    manifest.write_text(json.dumps(document))
    result = run_cli("report", str(copy.out), "--cache-dir", str(tmp_path / "elsewhere"))
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 12  # ten images, the count of the rest, the advice
    assert lines[10] == "warning: … and 2 more images that cannot be shown"


@pytest.mark.invalid_manifests
def test_names_in_a_tampered_manifest_are_shown_escaped(run_cli: RunCli, copy: PreviewRun,
                                                        tmp_path: Path) -> None:
    manifest = copy.out / "manifest.json"
    document = json.loads(manifest.read_text())
    document["steps"] = [{**step, "variant": "v\x1b]0;pwned\x07", "step": "[/b]\u202e"}
                         for step in document["steps"][:1]]
    manifest.write_text(json.dumps(document))
    (copy.out / document["steps"][0]["image"]).unlink()
    result = run_cli("report", str(copy.out), "--cache-dir", str(tmp_path / "elsewhere"))
    assert result.exit_code == 0, result.output
    sha = document["steps"][0]["output_sha256"]
    assert result.stderr.splitlines()[0] == (
        "warning: the image of v\\x1b]0;pwned\\x07 / [/b]\\u202e is not in the cache (object "
        f"{sha[:12]}), and its exported file {document['steps'][0]['image']} is missing")
    assert "\x1b" not in result.output
    assert "\u202e" not in result.output


def test_no_such_folder(run_cli: RunCli, tmp_path: Path) -> None:
    result = run_cli("report", str(tmp_path / "nowhere"))
    assert result.exit_code == 2
    assert result.stderr == (f"kontext-pipeline: no such folder {tmp_path / 'nowhere'}; name the "
                             "--out folder of a run (by default out/<recipe name>)\n")


def test_a_file_instead_of_a_folder(run_cli: RunCli, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    result = run_cli("report", str(tmp_path / "afile"))
    assert result.exit_code == 2
    assert result.stderr == (f"kontext-pipeline: {tmp_path / 'afile'} is not a folder; name the "
                             "--out folder of a run\n")


def test_a_folder_without_a_manifest(run_cli: RunCli, tmp_path: Path) -> None:
    result = run_cli("report", str(tmp_path))
    assert result.exit_code == 2
    assert result.stderr == (f"kontext-pipeline: {tmp_path} has no manifest.json; name the --out "
                             "folder of a run (by default out/<recipe name>), or run the recipe "
                             "first\n")


@pytest.mark.invalid_manifests
def test_the_folder_of_a_run_of_several_recipes(run_cli: RunCli, tmp_path: Path) -> None:
    for name in ("poster", "matrix"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text("{}")
    result = run_cli("report", str(tmp_path))
    assert result.exit_code == 2
    assert result.stderr == (f"kontext-pipeline: {tmp_path} has no manifest.json, but its "
                             "folders matrix, poster have one (a run of several recipes): "
                             "report each of them\n")


@pytest.mark.invalid_manifests
def test_a_manifest_that_is_not_json(run_cli: RunCli, copy: PreviewRun) -> None:
    (copy.out / "manifest.json").write_text('{"pipeline": \n')
    result = run_cli("report", str(copy.out), "--cache-dir", str(copy.cache))
    assert result.exit_code == 2
    assert result.stderr == (f"kontext-pipeline: {copy.out / 'manifest.json'} is damaged (not "
                             "JSON: Expecting value at line 2, column 1); run the recipe again "
                             "to rewrite it\n")


@pytest.mark.invalid_manifests
def test_a_manifest_of_the_wrong_shape(run_cli: RunCli, copy: PreviewRun) -> None:
    manifest = copy.out / "manifest.json"
    document = json.loads(manifest.read_text())
    document["steps"][4]["output_sha256"] = "../../../../etc/passwd"
    manifest.write_text(json.dumps(document))
    result = run_cli("report", str(copy.out), "--cache-dir", str(copy.cache))
    assert result.exit_code == 2
    assert result.stderr == (f"kontext-pipeline: {manifest} is not a manifest kontext-pipeline "
                             "wrote (steps[4].output_sha256: not a sha256 digest); run the "
                             "recipe again to rewrite it\n")


def test_a_report_that_cannot_be_written(run_cli: RunCli, copy: PreviewRun) -> None:
    (copy.out / "report.html").unlink()
    (copy.out / "report.html").mkdir()  # root may write anywhere, but not over a folder
    result = run_cli("report", str(copy.out), "--cache-dir", str(copy.cache))
    assert result.exit_code == 1
    assert result.stderr == (f"kontext-pipeline: cannot write {copy.out / 'report.html'}: Is a "
                             "directory; check that the folder is writable\n")


def test_report_is_a_command(run_cli: RunCli) -> None:
    result = run_cli("--help")
    assert "  report " in result.stdout
