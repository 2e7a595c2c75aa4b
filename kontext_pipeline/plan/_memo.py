"""Plan memos: a recipe validated and planned before is planned again from what was found then,
without the YAML reader, the JSON Schema or Jinja, whose imports and work cost more than the
rest of a run's start (``kontext-pipeline validate`` and every run leave one).

A memo lives in the platform's user cache directory (``plans/``, beside the default result
cache; never in ``--cache-dir``), one per recipe file and set of ``--var`` overrides. It holds
what everything that could change the plan was when it was made, and is used only if all of
it is still so: the recipe's text (sha256), the overrides, the environment variables templates
may see (sha256), this package's version and the code and libraries that validate and plan
(:func:`toolchain`), and each input image: its path found again from the recipe by the
recipe's own rule, its content by a stat signature as git's index keeps one (mode, device,
inode, size, modification and change times), its bytes hashed again when the signature
differs or is too recent to tell (a file changed within the clock's granularity of the memo's
making), and used only if that sha256 is the memo's.

A memo is input, like the cache: read bounded, a regular file (no link followed, in a real
folder), its body signed with this user's key (:mod:`._memo_key`: a memo another user wrote,
or one restored into place, is not used), every field checked
(:mod:`._memo_codec`); any doubt is a miss, and the recipe is validated and planned in full.
Writes are atomic; an invalid recipe is never memoized, and a memo is written only if the plan
it restores equals the plan it was made from. The folder keeps at most :data:`MAX_MEMOS`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import importlib.machinery
import json
import os
import stat
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kontext_pipeline._support import jsonsafe
from kontext_pipeline._support.diagnostics import Problem
from kontext_pipeline._support.files import (
    TEMPORARY_PREFIX,
    read_regular,
    sha256_regular,
    write_atomic,
)
from kontext_pipeline._support.userdirs import user_dir
from kontext_pipeline.errors import SpecError
from kontext_pipeline.plan._memo_codec import decode, encode
from kontext_pipeline.plan._memo_key import memo_key, sign
from kontext_pipeline.plan._plan import InputSizes, Plan, build_plan
from kontext_pipeline.recipe._checks import input_path
from kontext_pipeline.recipe._environ import template_environ
from kontext_pipeline.recipe._keys import canonical_json
from kontext_pipeline.recipe._positions import MAX_SOURCE_BYTES
from kontext_pipeline.recipe._spec import Spec, load_spec

__all__ = ["MAX_MEMOS", "MAX_MEMO_BYTES", "RACY_NS", "memo_folder", "memoize", "plan_recipes",
           "recall", "remember", "toolchain"]

MAX_MEMO_BYTES = 16 * 1024 * 1024
"""The largest memo read or written (a plan larger than this is planned in full every time)."""

MAX_MEMOS = 256
"""The most memos kept; writing one more removes the oldest."""

RACY_NS = 2_000_000_000
"""An input changed less than this before its memo was made may have changed again within the
file system's timestamp granularity (a jiffy on Linux, two seconds on FAT) with an identical
signature: its bytes are hashed again, as git does for a "racily clean" entry."""

_HEADER = b"kontext-pipeline plan memo 1 "
_READ = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
_LIBRARIES = ("jinja2", "jsonschema", "markupsafe", "PIL", "yaml")
"""The libraries whose behaviour validation and planning depend on."""


def memo_folder() -> Path | None:
    """Where memos are kept: ``plans`` in the platform's user cache directory (which honours
    ``XDG_CACHE_HOME``); None when there is none."""
    folder = user_dir("cache")
    return None if folder is None else folder / "plans"


@functools.cache
def toolchain() -> str:
    """A digest of what, besides the recipe, shapes a plan: this package's version, its code
    that validates and plans (each module's size and modification time), the Python version,
    and the libraries validation uses (their version files likewise). Upgrading or editing any
    of them makes every memo a miss."""
    root = sys.modules[__name__.partition(".")[0]]  # a package is imported before its modules
    parts: list[Any] = [root.__version__, sys.version]
    package = Path(str(root.__file__)).parent
    for folder in ("recipe", "plan", "_support", "schemas"):
        with os.scandir(package / folder) as items:
            found = sorted((i.name, i.stat()) for i in items
                           if i.name.endswith((".py", ".json")))
        parts.extend([name, info.st_size, info.st_mtime_ns] for name, info in found)
    for name in _LIBRARIES:
        # where the library would be imported from (it is not imported)
        origin = getattr(importlib.machinery.PathFinder.find_spec(name), "origin", None)
        info = os.stat(origin) if origin else None
        parts.append([name, origin, info and info.st_size, info and info.st_mtime_ns])
    return hashlib.sha256(canonical_json(parts)).hexdigest()


def plan_recipes(recipes: Sequence[str | os.PathLike[str]], *, overrides: Mapping[str, str],
                 environ: Mapping[str, str], provider: str) -> list[Plan]:
    """Each recipe's plan, as :func:`~._plan.build_plan` makes it from the validated recipe
    (:func:`~kontext_pipeline.recipe._spec.load_spec`): from its memo where one holds it, else
    in full (and memoized). Raises :class:`SpecError` with the problems of every invalid recipe
    at once, then :func:`~._plan.build_plan`'s errors."""
    folder = memo_folder()
    plans = [recall(recipe, overrides=overrides, environ=environ, provider=provider,
                    folder=folder) for recipe in recipes]
    specs: dict[int, Spec] = {}
    problems: list[Problem] = []
    for index, recipe in enumerate(recipes):
        if plans[index] is None:
            try:
                specs[index] = load_spec(recipe, env=environ)
            except SpecError as error:
                problems.extend(error.problems)
    if problems:
        raise SpecError(problems)
    made = []
    for index, spec in specs.items():
        plan = build_plan(spec, overrides=overrides, env=environ, provider=provider)
        plans[index] = plan
        made.append(plan)
    for plan in made:  # after every plan is made: an error in one stops the others' memos
        remember(plan, overrides=overrides, environ=environ, folder=folder)
    return [plan for plan in plans if plan is not None]


def memoize(spec: Spec, environ: Mapping[str, str]) -> None:
    """Keep a memo of the plan of ``spec`` (just validated) without overrides, for the runs
    to come (what ``validate`` leaves)."""
    folder = memo_folder()
    if folder is not None:
        with contextlib.suppress(Exception):  # it only saves time: nothing here stops validate
            remember(build_plan(spec, env=environ), overrides={}, environ=environ,
                     folder=folder)


def recall(recipe: str | os.PathLike[str], *, overrides: Mapping[str, str],
           environ: Mapping[str, str], provider: str, folder: Path | None) -> Plan | None:
    """The plan of ``recipe`` (with ``--var`` ``overrides``, templates seeing ``environ`` as
    validation lets them, run by ``provider``) that its memo in ``folder`` holds, if every
    input of it is unchanged; None otherwise (then validate and plan in full)."""
    if folder is None:
        return None
    try:
        return _recall(recipe, overrides=overrides, environ=environ, provider=provider,
                       folder=folder)
    except Exception:  # a memo is input: any doubt, the full path settles it
        return None


def _recall(recipe: str | os.PathLike[str], *, overrides: Mapping[str, str],
            environ: Mapping[str, str], provider: str, folder: Path) -> Plan | None:
    given = Path(recipe)
    raw = _read_recipe(given)
    if raw is None or not stat.S_ISDIR(os.lstat(folder).st_mode):
        return None
    text = raw.decode("utf-8-sig")
    key = memo_key(create=False)
    if key is None:
        return None
    data = read_regular(folder / _name(given, overrides), MAX_MEMO_BYTES)
    header, _, body = data.partition(b"\n")
    if not hmac.compare_digest(header, _HEADER + sign(key, body).encode()):
        return None
    memo = jsonsafe.loads(body)
    expected = _identity(given, text, overrides)
    if any(memo[k] != v for k, v in expected.items()) or memo["env"] != _env(
            environ, memo["plan"]["spec"]["env_names"]):
        return None
    root = Path(os.path.realpath(given.parent))
    paths: dict[str, Path] = {}
    hashes: dict[str, str] = {}
    for entry in memo["inputs"]:
        path = input_path(entry["source"], root)
        if path is None or not _unchanged(path, entry):
            return None
        paths[entry["name"]], hashes[entry["name"]] = path, entry["sha256"]
    return decode(memo["plan"], recipe=given, file=os.fspath(recipe), text=text,
                  provider=provider, hashes=hashes, paths=paths)


def remember(plan: Plan, *, overrides: Mapping[str, str], environ: Mapping[str, str],
             folder: Path | None) -> None:
    """Keep a memo of ``plan`` (just made in full, from ``overrides`` and ``environ``) in
    ``folder``, if its inputs are readable and steady and it restores to itself; a memo that
    cannot be written is not (nothing is said: it only saves time)."""
    if folder is None:
        return
    with contextlib.suppress(Exception):  # it only saves time: nothing about it stops a run
        _remember(plan, overrides=overrides, environ=environ, folder=folder)


def _remember(plan: Plan, *, overrides: Mapping[str, str], environ: Mapping[str, str],
              folder: Path) -> None:
    spec = plan.spec
    used = {image.name: image.sha256 for task in plan.tasks for image in task.images
            if image.sha256 is not None}
    inputs = []
    for name, image in spec.inputs.items():
        entry = _signed(name, image.source, image.path)
        if entry is None or used.get(name, entry["sha256"]) != entry["sha256"]:
            return  # changing, or changed since it was planned
        inputs.append(entry)
    measured = InputSizes(spec)
    sizes = {name: measured.of(name) for name in spec.inputs}
    document = encode(plan, sizes)
    memo = {**_identity(spec.path, spec.text, overrides),
            "env": _env(environ, list(spec.env_names)), "inputs": inputs, "plan": document}
    body = _json(memo)
    if len(body) + len(_HEADER) + 65 > MAX_MEMO_BYTES:
        return
    restored = decode(jsonsafe.loads(body)["plan"], recipe=spec.path, file=spec.file,
                      text=spec.text, provider=plan.provider,
                      hashes={e["name"]: e["sha256"] for e in inputs},
                      paths={name: image.path for name, image in spec.inputs.items()})
    if restored != plan or _json(encode(restored, sizes)) != _json(document):
        return  # something JSON does not keep (a tuple, an order): never memoized
    key = memo_key(create=True)
    if key is None:
        return
    header = _HEADER + sign(key, body).encode()
    write_atomic(folder / _name(spec.path, overrides), header + b"\n" + body,
                 inside=folder.parent, private=True)  # it holds rendered prompts
    _prune(folder)


def _json(document: Any) -> bytes:
    """``document`` as JSON, its mappings in their order (the plan's order is the recipe's)."""
    return json.dumps(document, ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).encode("utf-8")


def _name(recipe: Path, overrides: Mapping[str, str]) -> str:
    """The memo's file name: one per recipe file (as addressed) and set of overrides."""
    where = os.path.abspath(recipe)
    return f"{hashlib.sha256(canonical_json([where, dict(overrides)])).hexdigest()}.json"


def _identity(recipe: Path, text: str, overrides: Mapping[str, str]) -> dict[str, Any]:
    return {"recipe": os.path.abspath(recipe), "overrides": dict(overrides),
            "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "toolchain": toolchain()}


def _env(environ: Mapping[str, str], names: list[str]) -> str:
    """The sha256 of what templates see of ``environ`` (the values are not kept)."""
    return hashlib.sha256(canonical_json(template_environ(environ, names))).hexdigest()


def _read_recipe(path: Path) -> bytes | None:
    """The recipe's bytes if it is a regular file within the size limit (else the full path
    says what is wrong)."""
    handle = os.open(path, _READ)
    with os.fdopen(handle, "rb") as file:
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            return None
        raw = file.read(MAX_SOURCE_BYTES + 1)
    return raw if len(raw) <= MAX_SOURCE_BYTES else None


def _signature(info: os.stat_result) -> list[int]:
    return [info.st_mode, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns,
            info.st_ctime_ns]


def _signed(name: str, source: str, path: Path) -> dict[str, Any] | None:
    """A memo's record of an input: its sha256 and its signature, if it did not change while
    it was read."""
    checked = time.time_ns()
    before = os.stat(path)
    digest = sha256_regular(path)  # a pipe or a device is never read
    if digest is None or _signature(os.stat(path)) != _signature(before):
        return None
    return {"name": name, "source": source, "sha256": digest, "stat": _signature(before),
            "checked_ns": checked}


def _unchanged(path: Path, entry: Mapping[str, Any]) -> bool:
    """Whether the input at ``path`` still has the bytes ``entry`` records: its signature is
    the same and was not too recent to tell, or else its bytes hash the same."""
    info = os.stat(path)
    # where st_ctime is no change time (Windows: the creation time), a signature cannot tell
    # a rewrite in place that kept size and mtime: the bytes are hashed every time
    recent = os.name == "nt" or max(info.st_mtime_ns, info.st_ctime_ns) >= \
        entry["checked_ns"] - RACY_NS
    if _signature(info) == entry["stat"] and not recent:
        return True
    return bool(stat.S_ISREG(info.st_mode) and sha256_regular(path) == entry["sha256"])


def _prune(folder: Path) -> None:
    """Keep the :data:`MAX_MEMOS` newest memos (and no killed write's leftover an hour old)."""
    now = time.time()
    memos = []
    with os.scandir(folder) as items:
        for item in items:
            if not item.is_file(follow_symlinks=False):
                continue
            age = now - item.stat(follow_symlinks=False).st_mtime
            if item.name.startswith(TEMPORARY_PREFIX) and age > 3600:
                os.unlink(item.path)
            elif item.name.endswith(".json"):
                memos.append((age, item.path))
    for _, path in sorted(memos)[MAX_MEMOS:]:
        os.unlink(path)
