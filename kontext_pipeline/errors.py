"""The one error hierarchy of kontext-pipeline.

Every failure the library reports is a :class:`KontextError`. The command line maps each class
to its documented exit code in one place (``cli.EXIT_CODES``); the library never exits.
"""

from __future__ import annotations

from collections.abc import Sequence

from kontext_pipeline.diagnostics import Problem

__all__ = [
    "KontextError",
    "SpecError",
    "TemplateError",
    "UsageError",
]


class KontextError(Exception):
    """Base class of every error kontext-pipeline raises on purpose."""


class UsageError(KontextError):
    """A bad command-line option or library argument (exit code 2)."""


class SpecError(KontextError):
    """A recipe is invalid; ``problems`` holds every problem found, in source order (exit 2)."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(p.format() for p in self.problems))


class TemplateError(SpecError):
    """A prompt template failed to render (an undefined name, a sandbox refusal, a bad filter)."""
