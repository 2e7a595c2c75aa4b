"""Plan memos: a recipe validated (or run) before is planned again from its memo, with the very
plan the full path makes; anything that could change the plan makes the memo a miss, and a memo
that is damaged, too large, a link or tampered with is a miss too, silently."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

import kontext_pipeline
from kontext_pipeline._support.files import sha256_regular
from kontext_pipeline.errors import SpecError
from kontext_pipeline.plan import _memo
from kontext_pipeline.plan._memo import memo_folder, plan_recipes, recall, toolchain
from kontext_pipeline.plan._memo_codec import FILE_STEM, IDENTIFIER, SLUG, SLUG_LENGTH
from kontext_pipeline.plan._memo_key import key_path, memo_key, sign
from kontext_pipeline.plan._plan import Plan, build_plan
from kontext_pipeline.recipe._spec import load_spec
from tests.conftest import ROOT, RunCli, WriteRecipe

RECIPE = """
    version: 1
    name: memo
    description: Two steps of four variants.
    model: flux-kontext-pro
    seed: 5
    env: [BRAND]
    vars:
      mood: calm
      extra: {a: 1, b: [2.5, true]}
    inputs:
      photo: photo.png
    matrix:
      color: [red, blue]
      size: [s, l]
    outputs:
      final: two
      first: one
    steps:
      - id: one
        image: photo
        prompt: Make it {{ color }} and {{ mood }} ({{ size }}), for {{ env.BRAND }}
        aspect_ratio: "16:9"
      - id: two
        prompt: Then {{ steps.one.prompt | lower }} {{ extra.b[0] }}
        seed: 7
"""

ENV = {"BRAND": "Acme", "KONTEXT_VAR_UNUSED": "x", "BFL_API_KEY": "bfl_never_seen"}

def full(path: Path, overrides: Mapping[str, str] | None = None,
         environ: Mapping[str, str] = ENV, provider: str = "bfl") -> Plan:
    """The plan the full path makes: validated, then planned."""
    return build_plan(load_spec(path, env=environ), overrides=overrides, env=environ,
                      provider=provider)


def memoized(path: Path, overrides: Mapping[str, str] | None = None,
             environ: Mapping[str, str] = ENV, provider: str = "bfl") -> Plan | None:
    return recall(path, overrides=overrides or {}, environ=environ, provider=provider,
                  folder=memo_folder())


def planned(path: Path, overrides: Mapping[str, str] | None = None,
            environ: Mapping[str, str] = ENV) -> Plan:
    (plan,) = plan_recipes([path], overrides=overrides or {}, environ=environ, provider="bfl")
    return plan


def hashes_counted(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files the memo hashes from now on, in order."""
    hashed: list[Path] = []

    def counted(path: Path) -> str | None:
        hashed.append(path)
        return sha256_regular(path)

    monkeypatch.setattr(_memo, "sha256_regular", counted)
    return hashed


def memos() -> list[Path]:
    folder = memo_folder()
    assert folder is not None
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def facts(plan: Plan) -> list[Any]:
    """Everything of a plan in order (equality of dataclasses ignores the order of mappings)."""
    spec = plan.spec
    return [spec.path, spec.file, spec.text, spec.name, list(spec.variables.items()),
            [(n, i.source, i.path) for n, i in spec.inputs.items()], spec.matrix_keys,
            [(v.id, list(v.values.items())) for v in spec.variants],
            [(s.id, s.prompt_source, s.image, s.seed, list(s.models.items()),
              list(s.request.items()), s.prompt_position) for s in spec.steps],
            list(spec.outputs.items()), spec.warnings, spec.env_names, plan.provider,
            list(plan.variables.items()), [v.id for v in plan.variants],
            [(t.id, t.model, t.prompt, t.seed, t.params, t.images, t.input_sizes,
              t.static_key, t.credits) for t in plan.tasks]]


@pytest.fixture
def recipe(write_recipe: WriteRecipe) -> Path:
    return write_recipe(RECIPE)


def test_a_run_plans_from_the_memo_validate_left_the_very_plan_of_the_full_path(
        recipe: Path, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    assert memos() == []
    result = run_cli("validate", str(recipe))
    assert result.exit_code == 0, result.output
    assert len(memos()) == 1

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the recipe was read again")

    monkeypatch.setattr(_memo, "load_spec", refuse)
    for provider in ("bfl", "preview"):
        restored = plan_recipes([recipe], overrides={}, environ=ENV, provider=provider)[0]
        made = full(recipe, provider=provider)
        assert restored == made
        assert facts(restored) == facts(made)
    assert restored.spec.steps[0].prompt.render(  # compiled when first used
        {"color": "red", "mood": "calm", "size": "s", "env": {"BRAND": "Acme"}}) == (
        "Make it red and calm (s), for Acme")


def test_a_run_leaves_a_memo_and_the_next_imports_neither_jinja_nor_the_schema(
        recipe: Path, tmp_path: Path) -> None:
    script = (
        "import json, sys\n"
        "from kontext_pipeline.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exit:\n"
        "    code = exit.code\n"
        "print(json.dumps([code, [m for m in ('jinja2', 'jsonschema', 'yaml', 'PIL')\n"
        "                        if m in sys.modules]]))\n")
    environ = {**os.environ, **ENV, "PYTHONPATH": str(ROOT)}

    def frozen_run() -> list[Any]:
        argv = ["kontext-pipeline", "run", str(recipe), "--frozen", "--no-lock",
                "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
        done = subprocess.run([sys.executable, "-c", f"import sys; sys.argv = {argv!r}\n"
                               + script], capture_output=True, text=True, env=environ,
                              timeout=120, check=False)
        assert "is not cached" in done.stderr, done.stderr
        result: list[Any] = json.loads(done.stdout.splitlines()[-1])
        return result

    assert frozen_run() == [3, ["jinja2", "jsonschema", "yaml", "PIL"]]  # validated in full
    assert len(memos()) == 1
    assert frozen_run() == [3, []]


def test_each_thing_that_shapes_the_plan_makes_the_memo_a_miss(
        recipe: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    planned(recipe)
    assert memoized(recipe) == full(recipe)
    assert memoized(recipe, {"mood": "stormy"}) is None  # a --var: a memo of its own
    assert planned(recipe, {"mood": "stormy"}).tasks[0].prompt == (
        "Make it red and stormy (s), for Acme")
    assert memoized(recipe, {"mood": "stormy"}) == full(recipe, {"mood": "stormy"})
    assert memoized(recipe, {"color": "red"}) is None
    assert len(memos()) == 2
    assert memoized(recipe, environ={**ENV, "BRAND": "Other"}) is None
    assert memoized(recipe, environ={**ENV, "KONTEXT_VAR_NEW": "y"}) is None  # templates see it
    assert memoized(recipe, environ={**ENV, "UNSEEN": "y", "BFL_API_KEY": "other"}) is not None

    version = kontext_pipeline.__version__
    monkeypatch.setattr(kontext_pipeline, "__version__", "0.0.0+other")
    toolchain.cache_clear()
    assert memoized(recipe) is None  # another version of the package
    monkeypatch.setattr(kontext_pipeline, "__version__", version)
    toolchain.cache_clear()
    assert memoized(recipe) is not None

    recipe.write_text(recipe.read_text().replace("seed: 7", "seed: 8"))
    assert memoized(recipe) is None  # the recipe edited
    assert planned(recipe).tasks[1].seed == 8


def test_an_input_edited_keeping_its_size_and_modification_time_is_a_miss(
        recipe: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photo = recipe.parent / "photo.png"
    planned(recipe)
    monkeypatch.setattr(_memo, "RACY_NS", 0)  # trust signatures however recent: only they tell
    hashed = hashes_counted(monkeypatch)
    assert memoized(recipe) == full(recipe)
    assert hashed == []  # its signature is the memo's: not read

    before = photo.stat()
    os.utime(photo, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    assert memoized(recipe) == full(recipe)  # touched, the same bytes: hashed again, a hit
    assert hashed == [photo.resolve()]

    data = bytearray(photo.read_bytes())
    data[-20] ^= 0xFF  # the same size, another image (a damaged one)
    photo.write_bytes(bytes(data))
    os.utime(photo, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (photo.stat().st_size, photo.stat().st_mtime_ns) == (before.st_size,
                                                                 before.st_mtime_ns)
    assert memoized(recipe) is None
    with pytest.raises(SpecError):
        planned(recipe)


def test_an_input_changed_recently_is_hashed_again_whatever_its_signature(
        recipe: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    planned(recipe)
    hashed = hashes_counted(monkeypatch)
    assert memoized(recipe) is not None
    assert hashed == [(recipe.parent / "photo.png").resolve()]  # written within RACY_NS


def test_an_input_replaced_by_a_link_leading_out_of_the_recipe_folder_is_a_miss(
        recipe: Path, tmp_path: Path) -> None:
    photo = recipe.parent / "photo.png"
    outside = tmp_path.parent / f"{tmp_path.name}-outside.png"
    outside.write_bytes(photo.read_bytes())
    planned(recipe)
    photo.unlink()
    photo.symlink_to(outside)  # the same bytes, outside the recipe's folder
    assert memoized(recipe) is None
    with pytest.raises(SpecError, match="leads outside the recipe's directory"):
        planned(recipe)


def _sign(path: Path, body: bytes) -> None:
    """Write ``body`` as a memo signed with this user's key (as only a tamperer holding the
    key could), so that each check past the signature is what refuses it."""
    key = memo_key(create=False)
    assert key is not None
    path.write_bytes(b"kontext-pipeline plan memo 1 " + sign(key, body).encode() + b"\n" + body)


def test_a_memo_not_signed_with_this_users_key_is_not_used(recipe: Path) -> None:
    planned(recipe)
    (memo,) = memos()
    document = json.loads(memo.read_bytes().partition(b"\n")[2])
    document["plan"]["prompts"] = {variant: ["injected"] * len(prompts) for variant, prompts
                                   in document["plan"]["prompts"].items()}
    body = json.dumps(document).encode()
    checksum = b"kontext-pipeline plan memo 1 " + hashlib.sha256(body).hexdigest().encode()
    memo.write_bytes(checksum + b"\n" + body)  # what a checksum alone would have let through
    assert memoized(recipe) is None
    planned(recipe)  # signed again: a hit
    assert memoized(recipe) == full(recipe)
    key = key_path()
    assert key is not None
    key.unlink()  # another key (another user, a restored cache): nothing it did not sign
    assert memo_key(create=True) is not None
    assert memoized(recipe) is None


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX ownership and modes")
def test_a_key_others_could_read_or_swap_signs_nothing(recipe: Path) -> None:
    planned(recipe)
    key = key_path()
    assert key is not None
    assert memoized(recipe) is not None
    assert [m.stat().st_mode & 0o077 for m in memos()] == [0]  # its prompts are its owner's
    assert key.stat().st_mode & 0o077 == 0
    key.chmod(0o644)
    assert memo_key(create=False) is None
    assert memoized(recipe) is None
    key.chmod(0o600)
    assert memoized(recipe) is not None
    secret = key.read_bytes()
    key.unlink()
    elsewhere = key.with_name("elsewhere.key")
    elsewhere.write_bytes(secret)
    elsewhere.chmod(0o600)
    key.symlink_to(elsewhere)  # a link is never followed
    assert memo_key(create=False) is None
    assert memoized(recipe) is None


def _rewrite(path: Path, change: Callable[[dict[str, Any]], object]) -> None:
    """Change a memo's document and sign it again."""
    document = json.loads(path.read_bytes().partition(b"\n")[2])
    change(document)
    _sign(path, json.dumps(document).encode())


@pytest.mark.parametrize("damage", [
    "flipped byte", "truncated", "empty", "not json", "wrong field type", "oversized",
    "link", "linked folder", "escaping input", "escaping name", "unknown model", "folder",
])
def test_a_damaged_or_tampered_memo_is_a_silent_miss(
        recipe: Path, tmp_path: Path, damage: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    planned(recipe)
    (memo,) = memos()
    data = memo.read_bytes()
    if damage == "flipped byte":
        memo.write_bytes(data[:-10] + bytes([data[-10] ^ 1]) + data[-9:])
    elif damage == "truncated":
        memo.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        memo.write_bytes(b"")
    elif damage == "not json":
        _sign(memo, b'{"recipe": [1, 2')
    elif damage == "wrong field type":
        _rewrite(memo, lambda d: d["plan"]["spec"]["steps"][0].update(seed="5"))
    elif damage == "oversized":
        monkeypatch.setattr(_memo, "MAX_MEMO_BYTES", len(data) - 1)
    elif damage == "link":
        elsewhere = tmp_path / "elsewhere.json"
        memo.rename(elsewhere)
        memo.symlink_to(elsewhere)
    elif damage == "linked folder":
        real = memo.parent.with_name("plans-real")
        memo.parent.rename(real)
        memo.parent.symlink_to(real)
    elif damage == "escaping input":
        escape = f"../{tmp_path.name}-escape.png"
        (recipe.parent / escape).write_bytes((recipe.parent / "photo.png").read_bytes())
        _rewrite(memo, lambda d: (d["inputs"][0].update(source=escape),
                                  d["plan"]["spec"]["inputs"].update(photo=escape)))
    elif damage == "escaping name":
        _rewrite(memo, lambda d: d["plan"]["spec"].update(name="../up"))
    elif damage == "unknown model":
        _rewrite(memo, lambda d: d["plan"]["spec"]["steps"][1]["models"].update(
            {"color=red,size=s": "flux-unknown"}))
    elif damage == "folder":
        memo.unlink()
        memo.mkdir()
    assert memoized(recipe) is None
    assert facts(planned(recipe)) == facts(full(recipe))  # the full path, and nothing said
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("request_field", [
    {"output_format": "png/../../escaped"},  # it names the exported files
    {"safety_tolerance": 999},
    {"aspect_ratio": "1:1/.."},
])
def test_request_parameters_validation_would_refuse_are_a_miss(
        recipe: Path, request_field: dict[str, object]) -> None:
    planned(recipe)
    (memo,) = memos()
    _rewrite(memo, lambda d: d["plan"]["spec"]["steps"][0]["request"].update(request_field))
    assert memoized(recipe) is None
    assert facts(planned(recipe)) == facts(full(recipe))


def test_the_same_tampering_signed_as_made_is_a_hit(recipe: Path) -> None:
    """The control of the tampering cases: re-signing an unchanged memo keeps it a hit."""
    planned(recipe)
    (memo,) = memos()
    _rewrite(memo, lambda d: None)
    assert memoized(recipe) == full(recipe)


def test_an_invalid_recipe_is_never_memoized_and_says_what_it_said_without_memos(
        recipe: Path, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    assert run_cli("validate", str(recipe)).exit_code == 0
    recipe.write_text(recipe.read_text().replace("image: photo", "image: fhoto"))
    with_memo = run_cli("run", str(recipe), "--frozen")
    assert with_memo.exit_code == 2
    assert with_memo.stderr == (
        f"{recipe}:11:3: warning: inputs: input 'photo' is not used by any step\n"
        f"{recipe}:20:12: steps[0] (id: one): image: unknown image 'fhoto' (did you mean "
        f"'photo'?); expected an input name or an earlier step id\n"
        f"kontext-pipeline: 1 problem in {recipe}\n")
    for memo in memos():
        memo.unlink()
    assert run_cli("run", str(recipe), "--frozen").stderr == with_memo.stderr
    assert run_cli("validate", str(recipe)).exit_code == 2
    assert memos() == []


def test_the_folder_keeps_the_newest_memos(write_recipe: WriteRecipe,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_memo, "MAX_MEMOS", 2)
    recipes = [write_recipe(RECIPE, f"r{i}.yaml") for i in range(3)]
    dated: set[Path] = set()
    for index, recipe in enumerate(recipes):
        planned(recipe)
        for memo in set(memos()) - dated:  # each strictly older than the next one
            os.utime(memo, (1_000_000 + index, 1_000_000 + index))
            dated.add(memo)
    assert len(memos()) == 2
    assert memoized(recipes[0]) is None
    assert memoized(recipes[1]) is not None
    assert memoized(recipes[2]) is not None


def test_the_names_a_memo_may_hold_are_the_schemas() -> None:
    schema = json.loads((ROOT / "kontext_pipeline" / "schemas" / "pipeline.schema.json")
                        .read_text(encoding="utf-8"))
    assert f"^{SLUG.pattern}$" == schema["properties"]["name"]["pattern"]
    assert schema["properties"]["name"]["maxLength"] == SLUG_LENGTH
    assert f"^{IDENTIFIER.pattern}$" == schema["$defs"]["identifier"]["pattern"]
    assert f"^{FILE_STEM.pattern}$" == schema["$defs"]["file_stem"]["pattern"]


def test_the_memos_live_in_the_user_cache_directory(user_cache: Path) -> None:
    assert memo_folder() == user_cache / "kontext-pipeline" / "plans"
