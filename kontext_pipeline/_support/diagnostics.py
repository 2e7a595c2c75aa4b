"""Problems found in a recipe, each pinned to a file, line and column."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kontext_pipeline._support.text import printable

__all__ = ["Problem", "Severity"]

Severity = Literal["error", "warning"]


@dataclass(frozen=True, order=True)
class Problem:
    """One finding: ``FILE:LINE:COL: message`` (lines and columns count from 1; a problem with
    the file as a whole has line 0 and reads ``FILE: message``)."""

    file: str
    line: int
    column: int
    message: str
    severity: Severity = "error"

    def format(self) -> str:
        """The one-line form printed by ``validate`` (a control character that a recipe's
        text brought into the message shown as an escape: one problem, one line)."""
        label = "warning: " if self.severity == "warning" else ""
        file, message = printable(self.file), printable(self.message)
        if self.line == 0:
            return f"{file}: {label}{message}"
        return f"{file}:{self.line}:{self.column}: {label}{message}"

    @property
    def is_error(self) -> bool:
        return self.severity == "error"
