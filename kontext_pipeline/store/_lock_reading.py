"""Reading a lock as hostile input: it is hand-edited and merged, so git's conflict markers are
found before YAML parses it, YAML's core types alone are read (no alias of a list or mapping,
no tag but the core ones), every field is checked, and each problem is pinned to its line."""

from __future__ import annotations

import math
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from kontext_pipeline._support.diagnostics import Problem
from kontext_pipeline.errors import LockErrorCause
from kontext_pipeline.store._lock import LOCK_VERSION, Lock, LockedFile, LockedStep
from kontext_pipeline.store._lock_conflicts import conflict_problems

__all__ = ["MAX_PATH_CHARS", "MAX_TEXT_CHARS", "Repository", "UnreadableLock", "parse_lock"]

MAX_TEXT_CHARS = 1024 * 1024
"""The longest text a field of a lock may hold (a prompt is far shorter)."""

MAX_PATH_CHARS = 4096

_HEX = re.compile(r"[0-9a-f]{64}")
_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = frozenset(f"{_TAG}{name}" for name in ("str", "int", "float", "bool", "null",
                                                      "timestamp"))
_INT = re.compile(r"-?[0-9]{1,30}")
_FLOAT = re.compile(r"-?[0-9]{1,30}\.[0-9]{0,30}(?:[eE][-+][0-9]{1,3})?")


@dataclass(frozen=True)
class Repository:
    """The git repository a lock is in: its folder, and how many folders the lock's own folder
    is below it (as many ``..`` as a path of the lock may start with)."""

    root: str
    depth: int


class UnreadableLock(Exception):  # noqa: N818  (a result, raised: not an error of its own)
    """The lock cannot be read: its ``problems``, each at its line, and their ``cause``."""

    def __init__(self, problems: list[Problem], cause: LockErrorCause) -> None:
        super().__init__(problems)
        self.problems = problems
        self.cause: LockErrorCause = cause


def parse_lock(data: bytes, file: str, *, repository: Repository | None = None) -> Lock:
    """The lock in ``data`` (read from ``file``); :class:`UnreadableLock` says why there is
    none. ``repository``: the git repository the lock is in, out of which no path may lead."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _line_column(data[:exc.start].decode("utf-8", "replace"))
        raise UnreadableLock([Problem(file, line, column, "not UTF-8 text")], "invalid") from None
    conflicts = conflict_problems(text, file)
    if conflicts:
        raise UnreadableLock(conflicts, "conflict")
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        raise UnreadableLock([Problem(file, *where, f"not readable as YAML: "
                                                    f"{exc.problem or exc}")], "invalid") from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise UnreadableLock([Problem(file, 1, 1, f"not readable as YAML: {exc}")],
                             "invalid") from None
    newer = _version_problem(node, file)
    if newer is not None:  # nothing else of a lock of another version can be judged
        raise UnreadableLock([newer[0]], newer[1])
    problems: list[Problem] = []
    lock = _Reader(file, problems, repository).lock(node)
    if problems or lock is None:
        raise UnreadableLock(problems, "invalid")
    return lock


def _version_problem(node: yaml.Node | None,
                     file: str) -> tuple[Problem, LockErrorCause] | None:
    """The lock's ``version`` when it is not this one's, read before anything else."""
    if not isinstance(node, yaml.MappingNode):
        return None
    for key, value in node.value:
        if not (isinstance(key, yaml.ScalarNode) and key.value == "version"):
            continue
        where = (file, value.start_mark.line + 1, value.start_mark.column + 1)
        if (not isinstance(value, yaml.ScalarNode) or value.tag != f"{_TAG}int" or value.style
                or not _INT.fullmatch(value.value)):
            return (Problem(*where, f"version: {_show(value)} is not a lock version; this "
                                    f"kontext-pipeline reads version {LOCK_VERSION}"), "invalid")
        if int(value.value) == LOCK_VERSION:
            return None
        if int(value.value) > LOCK_VERSION:
            return (Problem(*where, f"version: this lock was written by a newer "
                                    f"kontext-pipeline (version {int(value.value)}); upgrade "
                                    "kontext-pipeline"), "newer")
        return (Problem(*where, f"version: {_show(value)} is not a lock version; this "
                                f"kontext-pipeline reads version {LOCK_VERSION}"), "invalid")
    return None


_Loader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _line_column(before: str) -> tuple[int, int]:
    return before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1


class _InvalidFieldError(Exception):
    """A field that cannot be used; its problem is recorded already."""


class _Reader:
    """Builds a :class:`Lock` out of composed YAML nodes, checking every field."""

    def __init__(self, file: str, problems: list[Problem],
                 repository: Repository | None) -> None:
        self.file = file
        self.problems = problems
        self.repository = repository
        self.seen: set[int] = set()  # the lists and mappings read: an alias is one seen twice

    def collection(self, node: yaml.Node) -> None:
        """Refuse an alias of a list or mapping (a small file would expand to a huge lock)."""
        if id(node) in self.seen:
            raise self.fail(node, "a YAML anchor repeated by an alias: a lock writes each value "
                                  "out")
        self.seen.add(id(node))
        if node.tag not in (f"{_TAG}map", f"{_TAG}seq"):
            raise self.fail(node, f"YAML tag {node.tag!r} is not used in a lock")

    def fail(self, node: yaml.Node, message: str) -> _InvalidFieldError:
        mark = node.start_mark
        self.problems.append(Problem(self.file, mark.line + 1, mark.column + 1, message))
        return _InvalidFieldError()

    def lock(self, node: yaml.Node | None) -> Lock | None:
        if node is None:
            self.problems.append(Problem(self.file, 1, 1, "the lock is empty"))
            return None
        try:
            top = self.mapping(node, "the lock", ("version", "recipe", "pipeline", "provider",
                                                  "variants"))
            recipe = self.text(top["recipe"], "recipe")
            pipeline = self.text(top["pipeline"], "pipeline")
            provider = self.text(top["provider"], "provider")
        except _InvalidFieldError:
            return None
        steps: dict[tuple[str, str], LockedStep] = {}
        variants = top["variants"]
        try:
            if not isinstance(variants, yaml.MappingNode):
                raise self.fail(variants, "variants must be a mapping of variant ids to their "
                                          "steps")
            self.collection(variants)
        except _InvalidFieldError:
            return None
        for variant_key, variant_node in self.pairs(variants):
            try:
                variant = self.text(variant_key, "a variant id")
                if not isinstance(variant_node, yaml.MappingNode):
                    raise self.fail(variant_node, f"variant '{variant}' must be a mapping of "
                                                  "step ids to their records")
                self.collection(variant_node)
            except _InvalidFieldError:
                continue
            for step_key, step_node in self.pairs(variant_node):
                try:
                    step = self.text(step_key, "a step id")
                    steps[(variant, step)] = self.step(variant, step, step_node)
                except _InvalidFieldError:
                    continue
        if self.problems:
            return None
        return Lock(recipe, pipeline, provider, steps)

    def pairs(self, node: yaml.MappingNode) -> Iterator[tuple[yaml.Node, yaml.Node]]:
        """The key and value nodes of a mapping, a repeated key reported."""
        seen: dict[str, int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    self.fail(key, f"duplicate key '{key.value}' (first at line "
                                   f"{seen[key.value]}); remove one of them")
                    continue
                seen[key.value] = key.start_mark.line + 1
            yield key, value

    def mapping(self, node: yaml.Node, what: str,
                fields: tuple[str, ...]) -> dict[str, yaml.Node]:
        """The values of a mapping with exactly ``fields`` (each missing or unknown one
        reported)."""
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping")
        self.collection(node)
        found: dict[str, yaml.Node] = {}
        failed = False
        for key, value in self.pairs(node):
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            if name not in fields or not isinstance(name, str):
                self.fail(key, f"unknown field {_show(key)} in {what}; a lock has "
                               f"{', '.join(fields)}")
                failed = True
                continue
            found[name] = value
        missing = [f"'{name}'" for name in fields if name not in found]
        if missing:
            self.fail(node, f"{what} has no {', '.join(missing)}")
            failed = True
        if failed:
            raise _InvalidFieldError
        return found

    def step(self, variant: str, step: str, node: yaml.Node) -> LockedStep:
        what = f"step '{step}' of variant '{variant}'"
        fields = self.mapping(node, what, ("key", "model", "seed", "prompt", "params",
                                           "inputs_sha256", "output_sha256", "credits",
                                           "request_id", "files"))
        inputs = fields["inputs_sha256"]
        if not isinstance(inputs, yaml.SequenceNode):
            raise self.fail(inputs, "inputs_sha256 must be a list of sha256 digests")
        self.collection(inputs)
        files = fields["files"]
        if not isinstance(files, yaml.SequenceNode):
            raise self.fail(files, "files must be a list of {path, file_sha256}")
        self.collection(files)
        request_id = fields["request_id"]
        return LockedStep(
            variant=variant, step=step, key=self.digest(fields["key"], "key"),
            model=self.text(fields["model"], "model"),
            seed=self.integer(fields["seed"], "seed"),
            prompt=self.text(fields["prompt"], "prompt", empty=True),
            params=self.params(fields["params"]),
            inputs_sha256=tuple(self.digest(n, "inputs_sha256") for n in inputs.value),
            output_sha256=self.digest(fields["output_sha256"], "output_sha256"),
            credits=self.credits(fields["credits"]),
            request_id=None if _is_null(request_id) else self.text(request_id, "request_id"),
            files=tuple(self.exported_file(n) for n in files.value))

    def params(self, node: yaml.Node) -> dict[str, Any]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, "params must be a mapping of parameter names to values")
        self.collection(node)
        params: dict[str, Any] = {}
        for key, value in self.pairs(node):
            name = self.text(key, "a parameter name")
            params[name] = self.value(value, f"params.{name}")
        return params

    def exported_file(self, node: yaml.Node) -> LockedFile:
        fields = self.mapping(node, "an exported file", ("path", "file_sha256"))
        path = self.text(fields["path"], "path")
        problem = _path_problem(path) or self.outside(path)
        if problem is not None:
            raise self.fail(fields["path"], f"path '{path}' {problem}")
        return LockedFile(path, self.digest(fields["file_sha256"], "file_sha256"))

    def outside(self, path: str) -> str | None:
        """Why ``path`` (normalised: its ``..`` all at its start) leads out of the lock's git
        repository, if it does."""
        if self.repository is None:
            return None
        climbs = next((i for i, part in enumerate(path.split("/")) if part != ".."), 0)
        if climbs <= self.repository.depth:
            return None
        return (f"leads out of the git repository the lock is in ({self.repository.root}); "
                "a lock's files are in its repository")

    # scalars -----------------------------------------------------------------------------

    def scalar(self, node: yaml.Node, what: str) -> yaml.ScalarNode:
        if not isinstance(node, yaml.ScalarNode):
            kind = "a list" if isinstance(node, yaml.SequenceNode) else "a mapping"
            raise self.fail(node, f"{what} must be a single value, not {kind}")
        if node.tag not in _SCALAR_TAGS:
            raise self.fail(node, f"YAML tag {node.tag!r} is not used in a lock")
        if len(node.value) > MAX_TEXT_CHARS:
            raise self.fail(node, f"{what} is longer than {MAX_TEXT_CHARS} characters")
        return node

    def text(self, node: yaml.Node, what: str, *, empty: bool = False) -> str:
        scalar = self.scalar(node, what)
        quoted = scalar.style in ("'", '"', "|", ">")
        if not quoted and scalar.tag != f"{_TAG}str":
            raise self.fail(node, f"{what} must be text, not {_show(scalar)}")
        if (not scalar.value and not empty) or "\0" in scalar.value:
            raise self.fail(node, f"{what} must be a non-empty text without NUL characters")
        return str(scalar.value)

    def digest(self, node: yaml.Node, what: str) -> str:
        value = self.scalar(node, what).value
        if not _HEX.fullmatch(value):
            raise self.fail(node, f"{what} {_show(node)} is not a sha256 digest "
                                  "(64 lowercase hexadecimal digits)")
        return str(value)

    def integer(self, node: yaml.Node, what: str) -> int:
        scalar = self.scalar(node, what)
        if scalar.style or not _INT.fullmatch(scalar.value):
            raise self.fail(node, f"{what} must be a whole number, not {_show(scalar)}")
        return int(scalar.value)

    def credits(self, node: yaml.Node) -> int | float:
        scalar = self.scalar(node, "credits")
        if not scalar.style and _INT.fullmatch(scalar.value):
            number: int | float = int(scalar.value)
        elif not scalar.style and _FLOAT.fullmatch(scalar.value):
            number = float(scalar.value)
        else:
            raise self.fail(node, f"credits must be a number, not {_show(scalar)}")
        if number < 0 or not math.isfinite(number):
            raise self.fail(node, f"credits must be a number of 0 or more, not {_show(scalar)}")
        return number

    def value(self, node: yaml.Node, what: str) -> Any:
        """A parameter's value: text, a whole number, a number, true, false or null."""
        scalar = self.scalar(node, what)
        if scalar.style:
            return self.text(scalar, what, empty=True)
        if _is_null(scalar):
            return None
        if scalar.value in ("true", "false"):
            return scalar.value == "true"
        if _INT.fullmatch(scalar.value):
            return int(scalar.value)
        if _FLOAT.fullmatch(scalar.value):
            return float(scalar.value)
        return self.text(scalar, what, empty=True)


def _is_null(node: yaml.Node) -> bool:
    return (isinstance(node, yaml.ScalarNode) and not node.style
            and node.value in ("null", "~", ""))


def _show(node: yaml.Node) -> str:
    if not isinstance(node, yaml.ScalarNode):
        return "a list" if isinstance(node, yaml.SequenceNode) else "a mapping"
    value = str(node.value)
    return repr(value if len(value) <= 40 else value[:37] + "...")


def _path_problem(path: str) -> str | None:
    """Why ``path`` is not a path a lock may name (None if it is one): relative to the lock's
    folder, ``/`` separators, normalised (``..`` only at its start)."""
    if len(path) > MAX_PATH_CHARS:
        return f"is longer than {MAX_PATH_CHARS} characters"
    if "\\" in path:
        return "uses '\\'; a lock's paths use '/' separators"
    if path.startswith("/") or re.match(r"[A-Za-z]:", path):
        return "is absolute; a lock's paths are relative to its folder"
    if posixpath.normpath(path) != path or path in (".", ".."):
        return "is not normalised (no '.', no empty part, '..' only at its start)"
    if path.rsplit("/", maxsplit=1)[-1] == "..":
        return "names a folder, not a file"
    return None
