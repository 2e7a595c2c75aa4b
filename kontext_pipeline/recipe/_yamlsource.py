"""Safe YAML loading that remembers where every key and value came from.

PyYAML's composer gives nodes with marks; we build plain JSON-like data from them ourselves, so
that only the YAML core types are accepted (no Python tags), every duplicate key is reported,
alias expansion is bounded (no "billion laughs"), and each value and key keeps its position for
error messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from kontext_pipeline._support.diagnostics import Problem
from kontext_pipeline.recipe._positions import MAX_SOURCE_BYTES, JsonPath, Position
from kontext_pipeline.recipe._yamlerrors import syntax_problem

__all__ = [
    "MAX_DEPTH",
    "MAX_NODES",
    "MAX_NUMBER_CHARS",
    "MAX_SOURCE_BYTES",
    "Document",
    "JsonPath",
    "Position",
    "parse_yaml",
    "position_of",
]

MAX_NODES = 100_000
"""Upper bound on values built from one document, aliases expanded."""

MAX_DEPTH = 50
"""Upper bound on nesting of mappings and lists."""

MAX_NUMBER_CHARS = 100
"""Upper bound on the characters of an integer (Python refuses to read or print very long
ones, and no value of a recipe needs more than ten digits)."""

_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {f"{_TAG}{name}" for name in ("str", "int", "float", "bool", "null")}
_TIMESTAMP = f"{_TAG}timestamp"
_MERGE = f"{_TAG}merge"


def position_of(node: yaml.Node) -> Position:
    """Where ``node`` starts in the source."""
    mark = node.start_mark
    style = node.style if isinstance(node, yaml.ScalarNode) else None
    return Position(mark.line + 1, mark.column + 1, style)


@dataclass
class Document:
    """Parsed recipe data plus the positions of its values and keys, by JSON path."""

    data: Any
    values: dict[JsonPath, Position] = field(default_factory=dict)
    keys: dict[JsonPath, Position] = field(default_factory=dict)

    def value_position(self, path: JsonPath) -> Position:
        """Where the value at ``path`` starts (the nearest enclosing value if unknown)."""
        for end in range(len(path), -1, -1):
            found = self.values.get(path[:end])
            if found is not None:
                return found
        return Position(1, 1)

    def key_position(self, path: JsonPath) -> Position:
        """Where the key naming ``path`` is written (its value's position if it has no key)."""
        return self.keys.get(path) or self.value_position(path)


class _Builder:
    def __init__(self, file: str, loader: yaml.SafeLoader) -> None:
        self.file = file
        self.loader = loader
        self.document = Document(None)
        self.problems: list[Problem] = []
        self.nodes = 0

    def problem(self, node: yaml.Node, message: str) -> None:
        pos = position_of(node)
        self.problems.append(Problem(self.file, pos.line, pos.column, message))

    def check_tag(self, node: yaml.Node) -> bool:
        """Whether a scalar's tag is one of YAML's core types (else a problem is recorded)."""
        if node.tag in _SCALAR_TAGS or node.tag == _TIMESTAMP:
            return True
        self.problem(node, f"YAML tag '{_short(node.tag)}' is not allowed in a recipe")
        return False

    def build(self, node: yaml.Node, path: JsonPath, depth: int) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _TooLargeError(node)
        if depth > MAX_DEPTH:
            raise _TooDeepError(node)
        self.document.values.setdefault(path, position_of(node))
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != f"{_TAG}seq":
                self.problem(node, f"YAML tag '{_short(node.tag)}' is not allowed in a recipe")
            return [self.build(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        return self.scalar(node)

    def scalar(self, node: yaml.Node) -> Any:
        text = str(node.value)
        if not self.check_tag(node):
            return text
        if node.tag == f"{_TAG}int" and len(text) > MAX_NUMBER_CHARS:
            raise _TooLongNumberError(node)
        if node.tag == _TIMESTAMP or _is_yaml11_only(node.tag, text):
            return text
        return self.loader.construct_object(node)

    def mapping(self, node: yaml.MappingNode, path: JsonPath, depth: int) -> dict[str, Any]:
        if node.tag != f"{_TAG}map":
            self.problem(node, f"YAML tag '{_short(node.tag)}' is not allowed in a recipe")
        result: dict[str, Any] = {}
        merged: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                merged.update(self.merge_sources(value_node, path, depth))
                continue
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE:
                self.problem(key_node, "keys must be plain text, not lists or mappings")
                continue
            self.check_tag(key_node)
            key = str(key_node.value)
            key_path = (*path, key)
            if key in result:
                first = self.document.keys[key_path]
                self.problem(
                    key_node,
                    f"duplicate key '{key}' (first defined at line {first.line}); "
                    "remove one of them",
                )
                continue
            self.document.keys[key_path] = position_of(key_node)
            result[key] = self.build(value_node, key_path, depth + 1)
        for key, value in merged.items():
            result.setdefault(key, value)
        return result

    def merge_sources(self, node: yaml.Node, path: JsonPath, depth: int) -> dict[str, Any]:
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        merged: dict[str, Any] = {}
        for source in reversed(sources):
            if not isinstance(source, yaml.MappingNode):
                self.problem(source, "'<<' merges mappings only")
                continue
            built = self.build(source, path, depth + 1)
            merged.update(built)
        return merged


def _is_yaml11_only(tag: str, text: str) -> bool:
    """Scalars that YAML 1.1 reads as numbers or booleans but YAML 1.2 reads as text: an
    unquoted ``16:9`` (base-60 number), ``yes``/``no``/``on``/``off``. They stay text."""
    if tag == f"{_TAG}bool":
        return text.lower() not in ("true", "false")
    return tag in (f"{_TAG}int", f"{_TAG}float") and ":" in text


def _short(tag: str) -> str:
    return "!!" + tag.removeprefix(_TAG) if tag.startswith(_TAG) else tag


class _TooLargeError(Exception):
    def __init__(self, node: yaml.Node) -> None:
        self.node = node


class _TooDeepError(Exception):
    def __init__(self, node: yaml.Node) -> None:
        self.node = node


class _TooLongNumberError(Exception):
    def __init__(self, node: yaml.Node) -> None:
        self.node = node


def parse_yaml(text: str, file: str) -> tuple[Document | None, list[Problem]]:
    """Parse one YAML document. Returns the document (None if unusable) and the problems."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_SOURCE_BYTES:
        message = f"the recipe is {size} bytes; recipes are limited to {MAX_SOURCE_BYTES} bytes"
        return None, [Problem(file, 1, 1, message)]
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)  # checks every character at once
        return _compose_and_build(loader, file)
    except yaml.reader.ReaderError as exc:
        return None, [_reader_problem(file, text, exc)]
    except yaml.MarkedYAMLError as exc:
        return None, [syntax_problem(file, text, exc)]
    except yaml.YAMLError as exc:  # PyYAML's other errors carry no position
        return None, [Problem(file, 1, 1, f"not readable as YAML: {exc}")]
    except RecursionError:
        return None, [Problem(file, 1, 1, f"nesting deeper than {MAX_DEPTH} levels")]
    finally:
        if loader is not None:
            loader.dispose()


def _reader_problem(file: str, text: str, exc: yaml.reader.ReaderError) -> Problem:
    """A character YAML does not allow (control characters and the like)."""
    before = text[: exc.position]
    line = before.count("\n") + 1
    column = exc.position - (before.rfind("\n") + 1) + 1
    return Problem(file, line, column,
                   f"character U+{exc.character:04X} is not allowed in YAML; remove it")


def _compose_and_build(loader: yaml.SafeLoader, file: str) -> tuple[Document | None,
                                                                    list[Problem]]:
    node = _single_node(loader, file)
    if isinstance(node, list):
        return None, node
    builder = _Builder(file, loader)
    try:
        builder.document.data = builder.build(node, (), 0)
    except _TooLargeError as exc:
        return None, [_at(file, exc.node, _too_large())]
    except _TooDeepError as exc:
        return None, [_at(file, exc.node, f"nesting deeper than {MAX_DEPTH} levels")]
    except _TooLongNumberError as exc:
        return None, [_at(file, exc.node, f"a number of {len(exc.node.value)} characters is "
                                          f"too long; a recipe's numbers have at most "
                                          f"{MAX_NUMBER_CHARS}")]
    return builder.document, builder.problems


def _single_node(loader: yaml.SafeLoader, file: str) -> yaml.Node | list[Problem]:
    node = loader.get_single_node()  # raises ComposerError on a second document
    if node is None or (node.tag == f"{_TAG}null" and not node.value):  # nothing, or a bare ---
        return [Problem(file, 1, 1, "the recipe is empty; start with 'version: 1'")]
    if not isinstance(node, yaml.MappingNode):
        kind = "a list" if isinstance(node, yaml.SequenceNode) else "a single value"
        return [_at(file, node, f"the recipe must be a mapping of keys to values, not {kind}")]
    return node


def _at(file: str, node: yaml.Node, message: str) -> Problem:
    pos = position_of(node)
    return Problem(file, pos.line, pos.column, message)


def _too_large() -> str:
    return (
        f"the recipe expands to more than {MAX_NODES} values "
        "(are YAML aliases repeating a large anchor?)"
    )
