"""Files written ahead into ``--out``: moved into place only by the export, and nothing of them
left behind otherwise (see kontext_pipeline.outputs._staging)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from kontext_pipeline.outputs._staging import STAGING_PREFIX, Staging

DATA = b"the exported file"
DIGEST = hashlib.sha256(DATA).hexdigest()


def listing(folder: Path) -> list[str]:
    """Every file and folder under ``folder``, hidden ones too, relative to it."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def staged(out: Path) -> list[Path]:
    return sorted(p for folder in out.glob(f"{STAGING_PREFIX}*") for p in folder.iterdir())


def test_a_staged_file_is_moved_into_place_and_nothing_else_stays(tmp_path: Path) -> None:
    out = tmp_path / "out"
    staging = Staging(out)
    staging.stage("steps/a/frame.png", "made-of", DATA, DIGEST)
    [file] = staged(out)
    inode = file.stat().st_ino
    target = out / "steps" / "a" / "frame.png"
    assert staging.place("steps/a/frame.png", "made-of", target) == DIGEST
    assert target.read_bytes() == DATA
    assert target.stat().st_ino == inode  # moved, not written again
    assert staging.place("steps/a/frame.png", "made-of", target) is None  # placed once
    staging.close()
    assert listing(out) == ["steps", "steps/a", "steps/a/frame.png"]


def test_a_file_staged_of_something_else_is_not_placed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    staging = Staging(out)
    staging.stage("poster.png", "made-of", DATA, DIGEST)
    assert staging.place("poster.png", "made-of-another-image", out / "poster.png") is None
    assert not (out / "poster.png").exists()
    assert staged(out) == []  # dropped
    staging.close()
    assert listing(out) == []


def test_closing_without_placing_leaves_a_new_out_folder_missing(tmp_path: Path) -> None:
    out = tmp_path / "runs" / "out"
    staging = Staging(out)
    staging.stage("n=1/poster.png", "made-of", DATA, DIGEST)
    staging.stage("steps/n=1/frame.png", "made-of", DATA, DIGEST)
    assert len(staged(out)) == 2
    staging.close()
    assert listing(tmp_path) == []  # out, its parent and the folders made for the files: gone
    staging.stage("late.png", "made-of", DATA, DIGEST)  # closed: nothing is staged any more
    assert not out.exists()


def test_closing_without_placing_leaves_an_existing_out_folder_as_it_was(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "steps").mkdir(parents=True)
    (out / "steps" / "frame.png").write_bytes(b"last run's")
    (out / "report.html").write_text("<p>last run</p>")
    before = listing(out)
    staging = Staging(out)
    staging.stage("steps/frame.png", "made-of", DATA, DIGEST)
    staging.stage("steps/n=2/frame.png", "made-of", DATA, DIGEST)
    staging.close()
    assert listing(out) == before
    assert (out / "steps" / "frame.png").read_bytes() == b"last run's"


def test_nothing_is_staged_through_a_link_in_the_way(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "steps").symlink_to(elsewhere, target_is_directory=True)
    staging = Staging(out)
    staging.stage("steps/n=1/frame.png", "made-of", DATA, DIGEST)
    assert staged(out) == []
    assert list(elsewhere.iterdir()) == []
    assert staging.place("steps/n=1/frame.png", "made-of", out / "x.png") is None  # the
    staging.close()  # export decides what to do there
    assert listing(elsewhere) == []


def test_a_killed_runs_staging_folder_goes_once_an_hour_old(tmp_path: Path) -> None:
    out = tmp_path / "out"
    old, young = out / f"{STAGING_PREFIX}killed", out / f"{STAGING_PREFIX}running"
    for folder in (old, young):
        folder.mkdir(parents=True)
        (folder / "0").write_bytes(DATA)
    hours_ago = time.time() - 2 * 3600
    os.utime(old, (hours_ago, hours_ago))
    staging = Staging(out)
    staging.stage("poster.png", "made-of", DATA, DIGEST)
    assert not old.exists()
    assert (young / "0").read_bytes() == DATA  # perhaps a run writing into the same folder now
    staging.close()
    assert listing(out) == [young.name, f"{young.name}/0"]
