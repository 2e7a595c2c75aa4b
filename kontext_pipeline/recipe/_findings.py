"""Collects problems about a parsed recipe and words where each one is.

A problem's location reads like the recipe: ``steps[2] (id: relight): aspect_ratio: …``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

from kontext_pipeline._support.diagnostics import Problem, Severity

if TYPE_CHECKING:
    from kontext_pipeline.recipe._positions import JsonPath, Position
    from kontext_pipeline.recipe._yamlsource import Document

__all__ = ["Findings", "did_you_mean", "where"]


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    import difflib  # noqa: PLC0415  (only a mistake needs it)

    close = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def where(data: Any, path: JsonPath) -> str:
    """``steps[2] (id: relight): image[1]`` for ``("steps", 2, "image", 1)``."""
    parts: list[str] = []
    rest = path
    if len(path) >= 2 and path[0] == "steps" and isinstance(path[1], int):
        parts.append(step_label(data, path[1]))
        rest = path[2:]
    dotted = ""
    for item in rest:
        dotted += f"[{item}]" if isinstance(item, int) else (f".{item}" if dotted else item)
    if dotted:
        parts.append(dotted)
    return ": ".join(parts)


def step_label(data: Any, index: int) -> str:
    """``steps[2] (id: relight)``, or ``steps[2]`` when the step has no usable id."""
    steps = data.get("steps") if isinstance(data, dict) else None
    step = steps[index] if isinstance(steps, list) and index < len(steps) else None
    step_id = step.get("id") if isinstance(step, dict) else None
    return f"steps[{index}] (id: {step_id})" if isinstance(step_id, str) else f"steps[{index}]"


class Findings:
    """Problems about one document, positioned from its source and sorted on request."""

    def __init__(self, file: str, document: Document) -> None:
        self.file = file
        self.document = document
        self.problems: list[Problem] = []
        self._error_paths: list[JsonPath] = []

    def add(
        self,
        path: JsonPath,
        message: str,
        *,
        at: Literal["value", "key"] = "value",
        severity: Severity = "error",
        position: Position | None = None,
    ) -> None:
        """Record ``message`` about the value at ``path``, prefixed with its location.

        With ``at="key"`` the message is about the key that ends ``path``: it is placed at the key
        and labelled with the mapping that holds it.
        """
        if position is None:
            position = (
                self.document.key_position(path) if at == "key"
                else self.document.value_position(path)
            )
        if severity == "error":
            self._error_paths.append(path)
        label = where(self.document.data, path[:-1] if at == "key" else path)
        text = f"{label}: {message}" if label else message
        self.problems.append(Problem(self.file, position.line, position.column, text, severity))

    def warn(self, path: JsonPath, message: str, *, at: Literal["value", "key"] = "value") -> None:
        self.add(path, message, at=at, severity="warning")

    def has_errors_under(self, prefix: JsonPath) -> bool:
        """Whether an error was recorded about ``prefix`` or anything inside it."""
        return any(path[: len(prefix)] == prefix for path in self._error_paths)

    @property
    def has_errors(self) -> bool:
        return any(p.is_error for p in self.problems)

    def sorted(self) -> list[Problem]:
        """Problems in source order, each reported once."""
        return sorted(set(self.problems))
