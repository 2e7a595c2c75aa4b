"""Each new result's files and thumbnail are made while the run waits on the API (see
kontext_pipeline.runner._eager): the export at the end moves those very files into place, and a
run that stops early leaves ``--out`` as the last run left it."""

from __future__ import annotations

import asyncio
import hashlib
import io
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from kontext_pipeline._support import jsonsafe
from kontext_pipeline.outputs._export import EXPORT_STATE, export_outputs
from kontext_pipeline.outputs._html_report import render_report
from kontext_pipeline.outputs._manifest import MANIFEST, read_manifest
from kontext_pipeline.outputs._records import StepRecord
from kontext_pipeline.outputs._staging import STAGING_PREFIX
from kontext_pipeline.outputs._thumbnails import THUMBNAILS, ThumbnailStore, make_thumbnail
from kontext_pipeline.plan._plan import Plan, Task, build_plan
from kontext_pipeline.recipe._spec import load_spec
from kontext_pipeline.runner._eager import EagerFinish
from kontext_pipeline.runner._executor import RunEvent
from kontext_pipeline.runner._pipelines import run_pipelines, run_plans
from kontext_pipeline.store._cache import Cache, CacheEntry
from tests.bfl_helpers import provider_for
from tests.conftest import Start, WriteRecipe

# ``frame`` asks the same of both variants (one key: twins); ``stars`` reads its result
RECIPE = """
    version: 1
    name: eager
    inputs: {photo: photo.png}
    matrix:
      n: [1, 2]
    steps:
      - {id: frame, image: photo, prompt: "Frame it"}
      - {id: stars, prompt: "Add {{ n }} stars"}
    outputs:
      final: stars
"""


def plan_of(recipe: Path) -> Plan:
    return build_plan(load_spec(recipe), overrides={}, env={}, provider="bfl")


def task(plan: Plan, variant: str, step: str) -> Task:
    return next(t for t in plan.tasks if t.variant == variant and t.step == step)


def picture(shade: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), (shade, 90, 200)).save(out, "PNG")
    return out.getvalue()


def stored(cache: Cache, task: Task, hashes: tuple[str, ...], shade: int) -> StepRecord:
    """``task``'s result, stored in ``cache`` as the executor stores one."""
    data = picture(shade)
    entry = CacheEntry(key=task.key(hashes), object=hashlib.sha256(data).hexdigest(),
                       size=len(data), format="png", width=40, height=30,
                       provider=task.provider, model=task.model, seed=task.seed,
                       request_id=f"request-{shade}", credits=4, duration_s=1.0,
                       created_at=time.time(), request=task.request_document(hashes))
    cache.store(data, entry)
    return StepRecord(task, "done", "miss", entry.key, hashes, entry, credits=4)


def files(out: Path) -> dict[str, bytes]:
    """Every file under ``out`` (hidden ones too) by its path relative to it."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file()}


def test_the_export_moves_the_files_written_ahead_into_place(tmp_path: Path,
                                                             write_recipe: WriteRecipe) -> None:
    plan = plan_of(write_recipe(RECIPE))
    cache = Cache(tmp_path / "cache")
    store = ThumbnailStore(cache.root / THUMBNAILS)
    out = tmp_path / "out"
    eager = EagerFinish([plan], [out], cache=cache, store=store, known={})
    photo = (task(plan, "n=1", "frame").images[0].sha256 or "",)
    frames = [stored(cache, task(plan, v, "frame"), photo, 10) for v in ("n=1", "n=2")]
    made = frames[0].entry.object  # type: ignore[union-attr]  # one request made both
    records = [*frames, *(stored(cache, task(plan, v, "stars"), (made,), shade)
                          for v, shade in (("n=1", 20), ("n=2", 30)))]
    for record in records:
        eager.settled(record)
    eager.settled(StepRecord(task(plan, "n=1", "frame"), "failed", "miss", error="no"))
    eager.wait_staged()
    ahead = {p.stat().st_ino for p in out.glob(f"{STAGING_PREFIX}*/*")}
    assert len(ahead) == 4  # two frames (one image, each with its provenance), two finals
    exported = export_outputs(plan, records, cache, out, staging=eager.stagings["eager"])
    eager.wait_thumbnails()
    eager.close()
    assert {(out / e.path).stat().st_ino for e in exported.values()} == ahead
    assert not list(out.glob(f"{STAGING_PREFIX}*"))
    plain = tmp_path / "plain"
    assert export_outputs(plan, records, cache, plain) == exported  # as it writes by itself
    ours, theirs = files(out), files(plain)
    assert {path: [what, size, digest] for path, (what, size, _, digest)
            in jsonsafe.loads(ours.pop(EXPORT_STATE)).items()} == {
        path: [what, size, digest] for path, (what, size, _, digest)
        in jsonsafe.loads(theirs.pop(EXPORT_STATE)).items()}  # all but the times written
    assert ours == theirs
    assert sorted(eager.thumbnails) == sorted({r.entry.object for r in records if r.entry})
    for digest, thumbnail in eager.thumbnails.items():
        assert store.get(digest) == thumbnail == make_thumbnail(cache.object_path(
            digest).read_bytes())


def test_a_run_leaves_no_file_written_ahead_and_exports_what_the_cache_holds(
        bfl_server: Start, write_recipe: WriteRecipe, tmp_path: Path) -> None:
    server = bfl_server(latency=0.2)
    recipe = write_recipe(RECIPE)
    cache = Cache(tmp_path / "cache")
    [report] = run_pipelines([plan_of(recipe)], cache=cache, out_dirs=[tmp_path / "out"],
                             open_provider=lambda: provider_for(server))
    assert report.failures == []
    assert sum(server.state.submits.values()) == 3  # the twins made one request
    assert not list((tmp_path / "out").glob(f"{STAGING_PREFIX}*"))
    # the same recipe exported from the cache alone (nothing made ahead), into another folder
    [again] = run_pipelines([plan_of(recipe)], cache=cache, out_dirs=[tmp_path / "again"],
                            open_provider=lambda: pytest.fail("nothing to request"),
                            frozen=True)
    made, cached = files(tmp_path / "out"), files(tmp_path / "again")
    images = sorted(path for path in made if path.endswith(".png"))
    assert images == ["n=1/final.png", "n=2/final.png", "steps/n=1/frame.png",
                      "steps/n=2/frame.png"]
    assert {path: made[path] for path in images} == {path: cached[path] for path in images}
    assert report.exported == again.exported
    # the report made with the run's own thumbnails is the page `report` makes from the cache
    page = render_report(read_manifest(tmp_path / "out" / MANIFEST), cache=cache,
                         base=tmp_path / "out")
    assert (page.shown, page.problems) == (4, ())  # the photo, the twins' frame, two finals
    assert made["report.html"] == page.html.encode()


@pytest.mark.parametrize("last_run", [False, True])
def test_a_run_stopped_midway_leaves_out_as_the_last_run_left_it(
        last_run: bool, bfl_server: Start, write_recipe: WriteRecipe, tmp_path: Path) -> None:
    server = bfl_server(latency=0.2)
    out = tmp_path / "out"
    cache = Cache(tmp_path / "cache")
    if last_run:
        run_pipelines([plan_of(write_recipe(RECIPE))], cache=cache, out_dirs=[out],
                      open_provider=lambda: provider_for(server))
    before = files(out) if last_run else None
    plan = plan_of(write_recipe(RECIPE.replace("Frame it", "Frame it in gold")))

    async def stopped() -> None:
        run = asyncio.current_task()
        assert run is not None

        def on_event(event: RunEvent) -> None:
            if event.kind == "submitted" and event.task.step == "stars":
                # the frames are stored: once both are written ahead, stop as Ctrl-C does
                deadline = time.monotonic() + 30
                while (len(list(out.glob(f"{STAGING_PREFIX}*/*"))) < 2
                       and time.monotonic() < deadline):
                    threading.Event().wait(0.005)
                assert len(list(out.glob(f"{STAGING_PREFIX}*/*"))) == 2
                run.cancel()

        await run_plans([plan], cache=cache, out_dirs=[out], on_event=on_event,
                        open_provider=lambda: provider_for(server))

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(stopped())
    if before is None:
        assert not out.exists()
    else:
        assert files(out) == before
        assert not list(out.glob(f"{STAGING_PREFIX}*"))
    assert len(list(cache.entries())) == (3 if last_run else 0) + 1  # the new frame is kept


def test_a_result_known_before_the_run_is_not_written_ahead(tmp_path: Path,
                                                            write_recipe: WriteRecipe) -> None:
    plan = plan_of(write_recipe(RECIPE))
    cache = Cache(tmp_path / "cache")
    out = tmp_path / "out"
    photo = (task(plan, "n=1", "frame").images[0].sha256 or "",)
    record = stored(cache, task(plan, "n=1", "frame"), photo, 10)
    assert record.entry is not None
    eager = EagerFinish([plan], [out], cache=cache, store=ThumbnailStore(
        cache.root / THUMBNAILS), known={record.task.id: record.entry})
    eager.settled(record)  # the cache or the lock had it: the export at the end sees to it
    eager.wait_staged()
    eager.wait_thumbnails()
    assert not list(out.glob(f"{STAGING_PREFIX}*/*"))
    assert eager.thumbnails == {}
    eager.close()


def test_the_work_waits_for_lulls_only_while_a_step_still_builds_on_a_result(
        tmp_path: Path, write_recipe: WriteRecipe) -> None:
    plan = plan_of(write_recipe(RECIPE))
    cache = Cache(tmp_path / "cache")
    eager = EagerFinish([plan], [tmp_path / "out"], cache=cache,
                        store=ThumbnailStore(cache.root / THUMBNAILS), known={})
    backlogs = (eager._staging, eager._pictures)
    assert all(backlog.waits_for_lulls for backlog in backlogs)
    photo = (task(plan, "n=1", "frame").images[0].sha256 or "",)
    eager.settled(stored(cache, task(plan, "n=1", "frame"), photo, 10))
    assert all(backlog.waits_for_lulls for backlog in backlogs)  # n=2's stars waits on its frame
    # a frame that failed settles too; its stars is skipped at once, n=1's is submitted now
    eager.settled(StepRecord(task(plan, "n=2", "frame"), "failed", "miss", error="no"))
    assert all(backlog.waits_for_lulls for backlog in backlogs)
    # the next record to settle came after those submits: none follows a result any more
    eager.settled(StepRecord(task(plan, "n=2", "stars"), "skipped", "miss", error="no"))
    assert not any(backlog.waits_for_lulls for backlog in backlogs)
    eager.wait_staged()
    assert len(list((tmp_path / "out").glob(f"{STAGING_PREFIX}*/*"))) == 1
    eager.close()


def test_the_work_of_a_recipe_of_one_step_waits_for_no_lull(
        tmp_path: Path, write_recipe: WriteRecipe) -> None:
    plan = plan_of(write_recipe(RECIPE.replace("""      - {id: stars, prompt: "Add {{ n }} stars"}
""", "").replace("final: stars", "final: frame")))
    assert [t.step for t in plan.tasks] == ["frame", "frame"]
    cache = Cache(tmp_path / "cache")
    eager = EagerFinish([plan], [tmp_path / "out"], cache=cache,
                        store=ThumbnailStore(cache.root / THUMBNAILS), known={})
    assert not eager._staging.waits_for_lulls
    assert not eager._pictures.waits_for_lulls
    eager.close()
