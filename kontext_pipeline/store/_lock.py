"""The lock: ``<recipe stem>.lock`` beside the recipe, the durable record of what a run made.

Per variant and step it holds the cache key of the request, the image as generated
(``output_sha256``), and every file the run exported for the step (``file_sha256``, the path
relative to the lock's folder with ``/`` separators), with the model, seed, prompt, parameters and
cost. It is committed with the exported files, so that the repository itself, not a cache that
CI may evict, is the record: ``check`` verifies both, and ``run`` takes what they hold as results.

Writing is deterministic (variants sorted by id, steps in recipe order, fixed formatting, a
final line feed) so that a pull request's diff of the lock reads as "these steps changed", and
a re-run that changes nothing leaves the file byte-identical. Reading treats the file as
hostile input (it is hand-edited and merged): bounded size, no symbolic link followed, git
conflict markers found before YAML is parsed, YAML's core types only, every field checked, and
each problem pinned to its line (:class:`~kontext_pipeline.errors.LockError`).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kontext_pipeline._support.diagnostics import Problem
from kontext_pipeline._support.files import IrregularFileError, TooLargeError, read_regular
from kontext_pipeline._support.files import write_atomic as _write_atomic
from kontext_pipeline.errors import LockError

try:
    import fcntl
except ImportError:  # pragma: no cover  (Windows)
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from kontext_pipeline.store._lock_reading import Repository

__all__ = ["LOCK_SUFFIX", "LOCK_VERSION", "MAX_LOCK_BYTES", "Lock", "LockedFile", "LockedStep",
           "lock_path", "prepare_writing", "read_lock", "read_sides", "render_lock",
           "repository_of", "update_lock", "write_lock"]

LOCK_VERSION = 1
LOCK_SUFFIX = ".lock"
MAX_LOCK_BYTES = 64 * 1024 * 1024
"""More than the lock of any recipe (10,000 steps of long prompts); a larger file is not read."""

_TAG = "tag:yaml.org,2002:"
_PLAIN = re.compile(r"[A-Za-z0-9_./][A-Za-z0-9_./=+@-]*")
"""Text written without quotes (if YAML does not read it as another type): the rest is quoted."""


@dataclass(frozen=True)
class LockedFile:
    """A file the run exported for a step: ``path`` relative to the lock's folder (``/``
    separators, may start with ``../``), and the sha256 of its bytes as written."""

    path: str
    file_sha256: str


@dataclass(frozen=True)
class LockedStep:
    """One step of one variant as a run made it."""

    variant: str
    step: str
    key: str
    model: str
    seed: int
    prompt: str
    params: Mapping[str, Any]
    inputs_sha256: tuple[str, ...]
    output_sha256: str
    credits: int | float
    request_id: str | None
    files: tuple[LockedFile, ...] = ()  # sorted by path

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", tuple(sorted(self.files, key=lambda f: f.path)))


@dataclass(frozen=True)
class Lock:
    """The lock of one recipe (version 1). ``steps`` by ``(variant, step)``; its order within a
    variant is the order the file lists them in (recipe order)."""

    recipe: str
    pipeline: str
    provider: str
    steps: Mapping[tuple[str, str], LockedStep] = field(default_factory=dict)

    def variant_steps(self, variant: str) -> list[LockedStep]:
        """The records of ``variant``, in the lock's order."""
        return [step for (v, _), step in self.steps.items() if v == variant]


def lock_path(recipe: Path) -> Path:
    """``<recipe stem>.lock`` beside the recipe."""
    return recipe.with_name(recipe.stem + LOCK_SUFFIX)


# --- writing -----------------------------------------------------------------------------


def render_lock(lock: Lock) -> bytes:
    """The lock's file, byte for byte: the same lock always gives the same bytes."""
    out = [f"# kontext-pipeline lock: what `kontext-pipeline run` made from "
           f"{_comment(lock.recipe)}.",
           "# Commit it with the exported files; `kontext-pipeline check` verifies both. "
           "Written by `run`.",
           f"version: {LOCK_VERSION}",
           f"recipe: {_scalar(lock.recipe)}",
           f"pipeline: {_scalar(lock.pipeline)}",
           f"provider: {_scalar(lock.provider)}"]
    by_variant: dict[str, list[LockedStep]] = {}
    for (variant, _), step in lock.steps.items():
        by_variant.setdefault(variant, []).append(step)
    if not by_variant:
        out.append("variants: {}")
    else:
        out.append("variants:")
    for variant in sorted(by_variant):
        out.append(f"  {_scalar(variant)}:")
        for step in by_variant[variant]:
            out.extend(_step_lines(step))
    return ("\n".join(out) + "\n").encode("utf-8")


def _step_lines(step: LockedStep) -> Iterator[str]:
    yield f"    {_scalar(step.step)}:"
    yield f"      key: {step.key}"
    yield f"      model: {_scalar(step.model)}"
    yield f"      seed: {_scalar(step.seed)}"
    yield f"      prompt: {_scalar(step.prompt)}"
    params = ", ".join(f"{_scalar(k)}: {_scalar(v)}" for k, v in step.params.items())
    yield f"      params: {{{params}}}"
    yield f"      inputs_sha256: [{', '.join(step.inputs_sha256)}]"
    yield f"      output_sha256: {step.output_sha256}"
    yield f"      credits: {_scalar(step.credits)}"
    yield f"      request_id: {_scalar(step.request_id)}"
    if not step.files:
        yield "      files: []"
        return
    yield "      files:"
    for file in step.files:
        yield f"        - {{path: {_scalar(file.path)}, file_sha256: {file.file_sha256}}}"


def _comment(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)


def _scalar(value: Any) -> str:
    """``value`` as a YAML scalar that reads back as the same value in a flow or block
    context: text plain when that is unambiguous, else double-quoted with escapes (never folded,
    whatever its length)."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("a lock holds finite numbers only")
        text = repr(value)
        mantissa, e, exponent = text.partition("e")
        if "." not in mantissa:
            mantissa += ".0"
        if e and exponent[0] not in "+-":
            exponent = "+" + exponent
        return mantissa + (f"e{exponent}" if e else "")
    if not isinstance(value, str):
        raise TypeError(f"a lock holds no {type(value).__name__}")
    if _PLAIN.fullmatch(value) and _resolves_to_text(value):
        return value
    return '"' + "".join(_escape(c) for c in value) + '"'


@functools.cache
def _resolver() -> Any:
    import yaml  # noqa: PLC0415  (only writing a lock needs it)

    return yaml.resolver.Resolver()


def prepare_writing() -> None:
    """Load what writing a lock needs, so that a run loads it while it waits on the API rather
    than at its end."""
    _resolver()


def _resolves_to_text(text: str) -> bool:
    import yaml  # noqa: PLC0415

    resolved = _resolver().resolve(yaml.ScalarNode, text, (True, False))
    return bool(resolved == f"{_TAG}str")


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape(char: str) -> str:
    if char in _ESCAPES:
        return _ESCAPES[char]
    code = ord(char)
    printable = (0x20 <= code <= 0x7E or code in (0x85,) or 0xA0 <= code <= 0xD7FF
                 or 0xE000 <= code <= 0xFFFD or 0x10000 <= code <= 0x10FFFF)
    if printable and code not in (0x85, 0x2028, 0x2029, 0xFEFF):  # line breaks, the BOM
        return char
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def write_lock(path: Path, lock: Lock) -> bool:
    """Write ``lock`` to ``path`` atomically (readers see the old file or the new one, whole);
    True if its bytes changed (nothing is written when they did not)."""
    data = render_lock(lock)
    try:
        if read_regular(path, MAX_LOCK_BYTES) == data:
            return False
    except (OSError, TooLargeError):
        pass
    _write_atomic(path, data, durable=True)
    return True


# --- reading -----------------------------------------------------------------------------


def read_lock(path: Path, *, recipe: str | None = None) -> Lock | None:
    """The lock at ``path``, every field checked; None when there is none. :class:`LockError`
    when it cannot be read, each problem at its line (``recipe``: the recipe as the way out
    names it; the ``.yaml`` file beside the lock by default). In a git repository, a path
    that leads out of it is refused."""
    recipe = recipe if recipe is not None else str(path.with_suffix(".yaml"))
    data = _read_bytes(path, recipe)
    if data is None:
        return None
    # the YAML reader only when there is a lock to read (a first run has none)
    from kontext_pipeline.store._lock_reading import UnreadableLock, parse_lock  # noqa: PLC0415

    try:
        return parse_lock(data, str(path), repository=repository_of(path))
    except UnreadableLock as unreadable:
        raise LockError(unreadable.problems, recipe=recipe, cause=unreadable.cause) from None


def read_sides(path: Path) -> list[Lock]:
    """The two sides ("ours", then "theirs") of a lock git merged with conflicts, each read as
    a lock; empty when the file has no conflict markers, they do not follow each other as git
    writes them, or a side is no lock."""
    from kontext_pipeline.store._lock_conflicts import conflict_sides  # noqa: PLC0415
    from kontext_pipeline.store._lock_reading import UnreadableLock, parse_lock  # noqa: PLC0415

    try:
        data = _read_bytes(path, str(path))
        sides = conflict_sides(data.decode("utf-8")) if data is not None else None
    except (LockError, UnicodeDecodeError):
        return []
    if sides is None:
        return []
    repository = repository_of(path)
    try:
        return [parse_lock(side.encode("utf-8"), str(path), repository=repository)
                for side in sides]
    except UnreadableLock:
        return []


def _read_bytes(path: Path, recipe: str) -> bytes | None:
    shown = str(path)
    try:
        return read_regular(path, MAX_LOCK_BYTES)
    except FileNotFoundError:
        return None
    except IrregularFileError as exc:
        raise LockError([Problem(shown, 0, 0, f"{exc.strerror}; a lock is read only as a "
                                              "regular file")], recipe=recipe) from None
    except TooLargeError:
        raise LockError([Problem(shown, 0, 0, f"is larger than a lock can be "
                                              f"({MAX_LOCK_BYTES} bytes)")],
                        recipe=recipe) from None
    except OSError as exc:
        raise LockError([Problem(shown, 0, 0, f"cannot be read ({exc.strerror or exc})")],
                        recipe=recipe) from None


def repository_of(path: Path) -> Repository | None:
    """The git repository the lock at ``path`` is in: the nearest folder above it (links
    resolved) that holds ``.git``; None outside any."""
    from kontext_pipeline.store._lock_reading import Repository  # noqa: PLC0415

    try:
        folder = path.parent.resolve()
    except OSError:
        return None
    for depth, parent in enumerate((folder, *folder.parents)):
        if os.path.lexists(parent / ".git"):
            return Repository(str(parent), depth)
    return None


def update_lock(path: Path, make: Callable[[Lock | None], Lock], *, recipe: str,
                unreadable: Lock | None = None) -> bool:
    """Write the lock ``make`` returns, given the lock at ``path`` as it is now (``unreadable``
    stands in for one that cannot be read): another run of the recipe may have written it
    since this one read it, and its records are to be kept. Runs doing so at once take turns
    (an exclusive lock on the folder, where the platform has one); True if the file's bytes
    changed."""
    with _folder_held(path.parent):
        try:
            current = read_lock(path, recipe=recipe)
        except LockError:
            current = unreadable
        return write_lock(path, make(current))


@contextlib.contextmanager
def _folder_held(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder`` itself: no file is left beside the lock, and
    the operating system lets go when the process ends, however it ends. Where there is none
    (Windows, a file system without locks), runs writing one lock at once may each keep only
    their own records, as before locks were taken."""
    try:
        handle = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        yield  # write_lock says why the folder cannot be written
        return
    try:
        if fcntl is not None:
            with contextlib.suppress(OSError):  # ENOLCK, EOPNOTSUPP: no locks there
                fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # lets go of the lock
