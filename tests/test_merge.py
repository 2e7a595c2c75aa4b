"""``report --merge INTO SHARD_DIR…``: the folders of a run's N shards (``--shard I/N``) become
one, as the run of every variant writes it: the same steps and totals, every exported file
byte for byte, one report of every variant. Every refusal (not every shard of one run, a file
not as exported, an INTO that is a link or inside a shard) is exit 2 and writes nothing."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image

from kontext_pipeline import Cache, build_plan, load_recipe, open_provider, run_pipelines
from kontext_pipeline.cli import cli
from kontext_pipeline.errors import UsageError
from kontext_pipeline.outputs._manifest import MANIFEST, Manifest, read_manifest
from kontext_pipeline.outputs._merge import merge_shards
from kontext_pipeline.outputs._provenance import strip_provenance
from kontext_pipeline.plan._shards import Shard
from tests.conftest import RunCli, exported_images, schema_errors
from tests.report_helpers import parse_html
from tests.test_shards import GRID

"""Twelve variants (3 × 4); each makes an intermediate image (under ``steps/``) and an output."""

MERGED_ORDER = [f"tone={tone},size={size}" for tone in ("dawn", "dusk", "noon")
                for size in (8, 9, 10, 100)]
"""The merged manifest's order of variants: their ids' natural order (the run's is the
matrix's, which the shards' manifests do not say)."""


@dataclass(frozen=True)
class Runs:
    """A workspace (the recipe and its photo) with the runs the tests merge: ``full``, every
    variant in one run; ``s1``…``s3``, shards 1/3 to 3/3 (sharing one cache); ``n4``, shard 2/4;
    ``edited``, shard 2/3 of the recipe with one more comment line."""

    root: Path

    @property
    def full(self) -> Path:
        return self.root / "full"

    @property
    def n4(self) -> Path:
        return self.root / "n4"

    @property
    def edited(self) -> Path:
        return self.root / "edited" / "out"

    @property
    def shards(self) -> list[Path]:
        return [self.root / f"s{index}" for index in (1, 2, 3)]


def run_shard(recipe: Path, shard: Shard, out: Path, cache: Path) -> None:
    """Run one shard as a CI job of the matrix does: ``run --shard I/N``."""
    result = CliRunner().invoke(cli, ["run", str(recipe), "--provider", "preview", "--shard",
                                      str(shard), "--cache-dir", str(cache), "--out", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert read_manifest(out / MANIFEST).shard == shard


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("merge")
    Image.new("RGB", (64, 48), (30, 120, 200)).save(root / "photo.png")
    recipe = root / "grid.yaml"
    recipe.write_text(textwrap.dedent(GRID).lstrip(), encoding="utf-8")
    (root / "edited").mkdir()
    edited = root / "edited" / "grid.yaml"
    edited.write_text(recipe.read_text() + "# edited\n", encoding="utf-8")
    shutil.copy(root / "photo.png", root / "edited" / "photo.png")
    plan = build_plan(load_recipe(recipe), provider="preview")
    run_pipelines([plan], cache=Cache(root / "cache-full"), out_dirs=[root / "full"],
                  open_provider=lambda: open_provider("preview", environ={}))
    for index in (1, 2, 3):
        run_shard(recipe, Shard(index, 3), root / f"s{index}", root / "cache-shards")
    run_shard(recipe, Shard(2, 4), root / "n4", root / "cache-shards")
    run_shard(edited, Shard(2, 3), root / "edited" / "out", root / "cache-shards")
    return Runs(root)


@pytest.fixture
def runs(made: Runs, tmp_path: Path) -> Runs:
    """The runs, copied (without their caches) so that a test may damage them."""
    shutil.copytree(made.root, tmp_path / "w", ignore=shutil.ignore_patterns("cache-*"))
    return Runs(tmp_path / "w")


def merge(run_cli: RunCli, into: Path, *folders: Path) -> Any:
    return run_cli("report", "--merge", str(into), *map(str, folders), "--cache-dir",
                   str(into.parent / "empty-cache"))


def content(manifest: Manifest) -> dict[tuple[str, str], dict[str, Any]]:
    """Each step's record, but for what differs between two runs of the same steps."""
    return {(s.variant, s.step): {**s.as_dict(), "duration_s": None, "request_id": None}
            for s in manifest.steps}


# --- the merge ---------------------------------------------------------------------------


def test_the_merged_shards_are_the_run_of_every_variant(run_cli: RunCli, runs: Runs) -> None:
    into = runs.root / "merged"
    result = merge(run_cli, into, *runs.shards)
    assert result.exit_code == 0, result.output
    assert result.stdout == (f"{into / 'report.html'}: 3 shards merged, 24 files copied, "
                             "12 variants, 25 images\n")
    assert result.stderr == ""
    assert schema_errors(into / MANIFEST) == []
    merged, full = read_manifest(into / MANIFEST), read_manifest(runs.full / MANIFEST)
    assert merged.shard is None
    assert "shard" not in json.loads((into / MANIFEST).read_text())
    assert (merged.pipeline, merged.spec_sha256, merged.provider) == (
        full.pipeline, full.spec_sha256, full.provider)
    assert merged.totals == full.totals
    assert content(merged) == content(full)
    assert merged.variants == MERGED_ORDER
    assert [s.step for s in merged.steps] == ["tint", "frame"] * 12
    # every file the run of every variant exported, byte for byte, and nothing else
    assert exported_images(into) == exported_images(runs.full)
    assert sorted(p.name for p in into.iterdir()) == [
        "manifest.json", "report.html", "steps", *sorted(MERGED_ORDER)]
    for step in merged.steps:
        assert step.image is not None
        data = (into / step.image).read_bytes()
        if step.output is not None:
            assert hashlib.sha256(data).hexdigest() == step.output_file_sha256
        generated = strip_provenance(data)
        assert generated is not None
        assert hashlib.sha256(generated).hexdigest() == step.output_sha256
    # the report: every variant, in the manifest's order, every image shown
    page = parse_html((into / "report.html").read_text(encoding="utf-8"))
    sections = [s for s in page.all("section") if s.attrs.get("id", "").startswith("v")]
    assert [s.one("h2").text for s in sections] == MERGED_ORDER
    assert "not shown" not in page.text


def test_the_merge_does_not_depend_on_the_order_of_the_folders(run_cli: RunCli,
                                                               runs: Runs) -> None:
    forward, backward = runs.root / "forward", runs.root / "backward"
    assert merge(run_cli, forward, *runs.shards).exit_code == 0
    assert merge(run_cli, backward, *runs.shards[::-1]).exit_code == 0
    assert (forward / MANIFEST).read_bytes() == (backward / MANIFEST).read_bytes()
    assert exported_images(forward) == exported_images(backward)
    assert ((forward / "report.html").read_bytes() == (backward / "report.html").read_bytes())


def test_the_inputs_are_named_from_where_the_merge_is(runs: Runs) -> None:
    """A recipe input's path is relative to the manifest's folder: from a deeper INTO, the
    same file; from shards run elsewhere (a CI job's artifact), the path as the shard ran."""
    deep = merge_shards(runs.root / "a" / "b", runs.shards).manifest
    assert {image.path for s in deep.steps for image in s.images or () if image.path} == {
        "../../photo.png"}
    moved = runs.root.parent / "artifacts"
    for folder in runs.shards:
        shutil.copytree(folder, moved / folder.name)
    far = merge_shards(runs.root / "merged", [moved / f.name for f in runs.shards]).manifest
    assert {image.path for s in far.steps for image in s.images or () if image.path} == {
        "../photo.png"}


def test_a_merge_removes_what_the_last_run_into_it_exported_as_a_run_does(
        run_cli: RunCli, runs: Runs) -> None:
    """INTO held a run whose outputs had other names: those still as exported go, an edited
    one stays with a warning, and a file no run exported stays."""
    into = runs.root / "merged"
    shutil.copytree(runs.full, into)
    document = json.loads((into / MANIFEST).read_text())
    renamed = []
    for step in document["steps"][1:4:2]:  # two variants' outputs, under an older name
        old = step["output"].replace("card.png", "old-card.png")
        (into / step["output"]).rename(into / old)
        step["output"] = step["image"] = old
        renamed.append(old)
    (into / MANIFEST).write_text(json.dumps(document), encoding="utf-8")
    (into / renamed[1]).write_bytes(b"edited")
    mine = into / "tone=dusk,size=10" / "mine.png"
    mine.write_bytes(b"mine")
    result = merge(run_cli, into, *runs.shards)
    assert result.exit_code == 0, result.output
    assert result.stderr == (f"warning: kept {into / renamed[1]}: it is not as the last run "
                             "exported it, and this run no longer exports it\n")
    assert exported_images(into) == {**exported_images(runs.full), renamed[1]: b"edited",
                                     "tone=dusk,size=10/mine.png": b"mine"}


def test_a_shard_with_no_variant_merges_too(run_cli: RunCli, tmp_path: Path) -> None:
    recipe = tmp_path / "pair.yaml"
    recipe.write_text(textwrap.dedent("""
        version: 1
        name: pair
        matrix:
          ink: [red, blue]
        steps:
          - {id: draw, prompt: "Draw it in {{ ink }}"}
        outputs:
          drawing: draw
        """).lstrip(), encoding="utf-8")
    folders = [tmp_path / f"s{index}" for index in (1, 2, 3)]
    for index, folder in enumerate(folders, 1):
        run_shard(recipe, Shard(index, 3), folder, tmp_path / "cache")
    sizes = sorted(len(read_manifest(f / MANIFEST).steps) for f in folders)
    assert sizes == [0, 1, 1]
    result = merge(run_cli, tmp_path / "merged", *folders)
    assert result.exit_code == 0, result.output
    assert result.stdout == (f"{tmp_path / 'merged' / 'report.html'}: 3 shards merged, "
                             "2 files copied, 2 variants, 2 images\n")
    assert read_manifest(tmp_path / "merged" / MANIFEST).variants == ["ink=blue", "ink=red"]


# --- refusals: exit 2, nothing written ---------------------------------------------------


def refused(run_cli: RunCli, into: Path, folders: list[Path], message: str) -> None:
    """The merge is refused with ``message`` and exit 2, and writes nothing in the shards'
    folders, nor INTO when it is a new folder."""
    before = {f: sorted(p.relative_to(f) for p in f.rglob("*")) for f in folders if f.is_dir()}
    new = not os.path.lexists(into)
    result = merge(run_cli, into, *folders)
    assert (result.exit_code, result.stdout, result.stderr) == (
        2, "", f"kontext-pipeline: {message}\n")
    assert {f: sorted(p.relative_to(f) for p in f.rglob("*")) for f in before} == before
    assert not (new and os.path.lexists(into))


def test_overlapping_shards_are_refused(run_cli: RunCli, runs: Runs) -> None:
    s1, s2, s3 = runs.shards
    twin = runs.root / "twin"
    shutil.copytree(s1, twin)
    into = runs.root / "merged"
    refused(run_cli, into, [s1, twin, s2, s3],
            f"{s1} and {twin} both hold shard 1/3; name each shard's folder once")
    refused(run_cli, into, [s1, s2, s1.parent / "." / "s1", s3],
            f"{s1.parent / '.' / 's1'} is named twice (as {s1} too); name each shard's folder "
            "once")
    # a shard that holds another's variants
    manifest = read_manifest(twin / MANIFEST)
    (twin / MANIFEST).write_text(dataclasses.replace(manifest, shard=Shard(2, 3)).to_json(),
                                 encoding="utf-8")
    first = read_manifest(s1 / MANIFEST).variants[0]
    refused(run_cli, into, [s1, twin, s3],
            f"variant {first} is in both {s1} (shard 1/3) and {twin} (shard 2/3): the shards "
            "of one run share no variant; run them again")


def test_a_missing_shard_is_refused(run_cli: RunCli, runs: Runs) -> None:
    s1, s2, s3 = runs.shards
    into = runs.root / "merged"
    refused(run_cli, into, [s3, s1], "shard 2/3 is missing (the folders given hold 1/3, "
            "3/3); name the folder of every shard, 1/3 to 3/3")
    refused(run_cli, into, [s2], "shards 1/3, 3/3 are missing (the folders given hold 2/3); "
            "name the folder of every shard, 1/3 to 3/3")


def test_shards_of_different_runs_are_refused(run_cli: RunCli, runs: Runs) -> None:
    s1, s2, s3 = runs.shards
    into = runs.root / "merged"
    edited = runs.edited
    first, other = (read_manifest(p / MANIFEST).spec_sha256[:12] for p in (s1, edited))
    refused(run_cli, into, [s1, edited, s3],
            f"{edited} and {s1} ran different versions of the recipe grid (spec_sha256 "
            f"{other}… and {first}…); run every shard of one version, or name the folders of "
            "the N shards of one run")
    refused(run_cli, into, [s1, runs.n4, s3],
            f"{s1} holds shard 1/3 but {runs.n4} shard 2/4: they are not shards of one run; "
            "name the folders of the N shards of one run")
    refused(run_cli, into, [s1, s2, s3, runs.full],
            f"{runs.full / MANIFEST} records no shard: it is a run of every variant, not one "
            "of `run --shard I/N`; name the folders of the N shards of one run")
    for field, value, said in [("pipeline", "card", "is a run of the recipe card, {s1} of grid"),
                               ("provider", "bfl", "ran with the provider bfl, {s1} with "
                                                   "preview")]:
        document = json.loads((s2 / MANIFEST).read_text())
        (s2 / MANIFEST).write_text(json.dumps({**document, field: value}), encoding="utf-8")
        refused(run_cli, into, [s1, s2, s3], f"{s2} {said.format(s1=s1)}; name the folders "
                "of the N shards of one run")
        (s2 / MANIFEST).write_text(json.dumps(document), encoding="utf-8")


def test_a_shard_without_its_manifest_is_refused(run_cli: RunCli, runs: Runs) -> None:
    s1, s2, s3 = runs.shards
    (s2 / MANIFEST).unlink()
    refused(run_cli, runs.root / "merged", [s1, s2, s3],
            f"{s2} has no manifest.json; name the --out folder of a run (by default "
            "out/<recipe name>), or run the recipe first")


@pytest.mark.parametrize("which", ["output", "image"])
def test_a_file_changed_in_a_shard_is_refused(run_cli: RunCli, runs: Runs, which: str) -> None:
    """An output (checked against ``output_file_sha256``) or an intermediate step's image
    (its image without provenance against ``output_sha256``), its pixels changed."""
    s1, s2, s3 = runs.shards
    step = next(s for s in read_manifest(s2 / MANIFEST).steps if getattr(s, which))
    relative = getattr(step, which)
    path = s2 / relative
    with Image.open(path) as image:
        image.load()
        painted = image.copy()
    painted.putpixel((0, 0), (255, 0, 0))
    painted.save(path)
    refused(run_cli, runs.root / "merged", [s1, s2, s3],
            f"{path} has changed since shard 2/3 exported it (its sha256 is not the one its "
            "manifest records); restore it, or run shard 2/3 again")


def test_a_missing_or_linked_file_in_a_shard_is_refused(run_cli: RunCli, runs: Runs) -> None:
    s1, s2, s3 = runs.shards
    output = next(s.output for s in read_manifest(s3 / MANIFEST).steps if s.output)
    assert output is not None
    path = s3 / output
    kept = path.read_bytes()
    path.unlink()
    into = runs.root / "merged"
    refused(run_cli, into, [s1, s2, s3], f"{path} is missing (shard 3/3 exported it); restore "
            "it, or run shard 3/3 again")
    (runs.root / "kept.png").write_bytes(kept)
    path.symlink_to(runs.root / "kept.png")
    refused(run_cli, into, [s1, s2, s3], f"{path} is not a regular file (a link?); restore "
            "it, or run shard 3/3 again")
    path.unlink()
    folder = path.parent
    folder.rename(runs.root / "elsewhere")
    folder.symlink_to(runs.root / "elsewhere")
    refused(run_cli, into, [s1, s2, s3], f"{path} is outside {s3} (through a link); restore "
            "it, or run shard 3/3 again")


@pytest.mark.invalid_manifests
def test_a_manifest_naming_a_file_outside_its_folder_is_refused(run_cli: RunCli,
                                                                runs: Runs) -> None:
    s1, s2, s3 = runs.shards
    document = json.loads((s1 / MANIFEST).read_text())
    document["steps"][1]["output"] = "../s2/x.png"
    (s1 / MANIFEST).write_text(json.dumps(document), encoding="utf-8")
    refused(run_cli, runs.root / "merged", [s1, s2, s3],
            f"{s1 / MANIFEST}: steps[1] names the file '../s2/x.png', which is not a path "
            f"inside {s1}; run shard 1/3 again")


def test_into_a_link_or_a_shards_folder_is_refused(run_cli: RunCli, runs: Runs) -> None:
    s1, s2, s3 = runs.shards
    target = runs.root / "target"
    target.mkdir()
    link = runs.root / "link"
    link.symlink_to(target)
    refused(run_cli, link, [s1, s2, s3], f"{link} is a symbolic link; name a real folder (or a "
            "new one) as INTO")
    assert list(target.iterdir()) == []
    refused(run_cli, s2 / "merged", [s1, s2, s3], f"{s2 / 'merged'} is inside the shard folder "
            f"{s2}; name a folder outside every shard's as INTO")
    refused(run_cli, s3, [s1, s2, s3], f"{s3} is the shard folder {s3}; name a folder outside "
            "every shard's as INTO")


def test_report_takes_one_folder_or_merge_and_its_shards(run_cli: RunCli, runs: Runs) -> None:
    result = run_cli("report", "--merge", str(runs.root / "merged"))
    assert (result.exit_code, result.stderr) == (
        2, "kontext-pipeline: report --merge INTO takes the folders of the shards after INTO: "
           "report --merge INTO SHARD_DIR...\n")
    result = run_cli("report", *map(str, runs.shards))
    assert (result.exit_code, result.stderr) == (
        2, "kontext-pipeline: report takes one OUT_DIR, the --out folder of a run (given 3); "
           "to combine the folders of shards, write report --merge INTO SHARD_DIR...\n")
    result = run_cli("report")
    assert (result.exit_code, result.stderr) == (
        2, "kontext-pipeline: report takes one OUT_DIR, the --out folder of a run\n")
    with pytest.raises(UsageError, match=r"^no shard folder to merge: name the folders of "
                       r"the N shards of one run$"):
        merge_shards(runs.root / "merged", [])
