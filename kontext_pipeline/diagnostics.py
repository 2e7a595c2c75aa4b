"""Problems found in a recipe, each pinned to a file, line and column."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
        """The one-line form printed by ``validate``."""
        label = "warning: " if self.severity == "warning" else ""
        if self.line == 0:
            return f"{self.file}: {label}{self.message}"
        return f"{self.file}:{self.line}:{self.column}: {label}{self.message}"

    @property
    def is_error(self) -> bool:
        return self.severity == "error"
