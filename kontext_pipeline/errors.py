"""The one error hierarchy of kontext-pipeline.

Every failure the library reports is a :class:`KontextError`. The command line maps each class
to its documented exit code in one place (``cli.EXIT_CODES``); the library never exits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from kontext_pipeline._support.text import printable

if TYPE_CHECKING:
    from kontext_pipeline._support.diagnostics import Problem

__all__ = [
    "AmbiguousSubmitError",
    "AuthenticationError",
    "BudgetExceededError",
    "CacheError",
    "FrozenCacheMissError",
    "InvalidResultError",
    "KontextError",
    "LockError",
    "LockMismatchError",
    "ModerationError",
    "OutOfCreditsError",
    "OutputError",
    "ProvenanceError",
    "ProviderError",
    "ProviderTimeoutError",
    "ProviderUnavailableError",
    "RefusedToSpendError",
    "RequestRejectedError",
    "SpecError",
    "StepsFailedError",
    "TaskFailedError",
    "TemplateError",
    "UsageError",
]

LockErrorCause = Literal["conflict", "newer", "invalid"]
"""Why a lock cannot be read: git merge ``conflict`` markers, a ``newer`` version, or anything
else (``invalid``)."""


class KontextError(Exception):
    """Base class of every error kontext-pipeline raises on purpose."""


class UsageError(KontextError):
    """A bad command-line option or library argument (exit code 2)."""


class ProvenanceError(UsageError):
    """An image given to ``inspect`` cannot be read, is not a PNG or JPEG, or carries no (or
    damaged) provenance (exit code 2)."""


class SpecError(KontextError):
    """A recipe is invalid; ``problems`` holds every problem found, in source order (exit 2)."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(p.format() for p in self.problems))


class TemplateError(SpecError):
    """A prompt template failed to render (an undefined name, a sandbox refusal, a bad filter)."""


class LockError(KontextError):
    """A recipe's lock cannot be read (merge conflict markers, a hand edit, another version);
    ``problems`` holds each one, pinned to its line (exit code 2). ``cause`` says which: a lock
    merged with ``conflict`` markers, one written by a ``newer`` kontext-pipeline, or an
    ``invalid`` one. The message ends with the way out: resolve the conflict, or fix the file,
    or rewrite it with ``run --frozen --relock`` (which reads both sides of a conflict, and
    otherwise has the cache alone to go on); a newer lock asks for an upgrade, nothing else."""

    def __init__(self, problems: Sequence[Problem], *, recipe: str,
                 cause: LockErrorCause = "invalid") -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        self.recipe = recipe
        self.cause: LockErrorCause = cause
        lines = [p.format() for p in self.problems] or [f"{recipe}: the lock cannot be read"]
        relock = f"`kontext-pipeline run --frozen --relock {printable(recipe)}`"
        if cause == "conflict":
            lines[-1] += (f"; resolve the conflict, or rewrite it with {relock}, which reads "
                          "both sides and keeps each record whose image the cache or the "
                          "exported files hold")
        elif cause == "invalid":
            lines[-1] += f"; fix it, or rewrite it from the cache alone with {relock}"
        super().__init__("\n".join(lines))


class ProviderError(KontextError):
    """A request to the image provider failed (exit code 1).

    ``retryable``: trying the same request again later may succeed (the executor does not retry
    on its own; the provider already did within its policy). ``stops_run``: no further request
    can succeed either (a bad key, no credits), so the whole run stops at once.
    """

    retryable: bool = False
    stops_run: bool = False

    def __init__(self, message: str, *, details: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message if not self.details else f"{self.message} ({self.details})"


class AuthenticationError(ProviderError):
    """401/403: the API key is missing, invalid or lacks permission."""

    stops_run = True


class OutOfCreditsError(ProviderError):
    """402: the account has no credits left."""

    stops_run = True


class RequestRejectedError(ProviderError):
    """400/422: the API refused the request as malformed or invalid."""


class TaskFailedError(ProviderError):
    """The task ended in ``Error``, ``Failed`` or ``Task not found`` (or polling met an HTTP
    error no retry can change); ``status`` is the one it ended with."""

    def __init__(self, message: str, *, status: str, details: str | None = None) -> None:
        super().__init__(message, details=details)
        self.status = status


class ModerationError(TaskFailedError):
    """``Request Moderated`` or ``Content Moderated``: never retried, never charged."""


class ProviderUnavailableError(ProviderError):
    """The service could not be reached or kept failing after every retry."""

    retryable = True


class AmbiguousSubmitError(ProviderError):
    """A submit failed in a way that may have been accepted and billed; it is not retried."""


class ProviderTimeoutError(ProviderError):
    """The task did not finish before the overall deadline."""

    retryable = True


class InvalidResultError(ProviderError):
    """The result could not be used: not an image, truncated, too large, or malformed JSON."""

    retryable = True


class CacheError(KontextError):
    """The cache directory cannot be used (not writable, not a directory, disk full)."""


class OutputError(KontextError):
    """An output or manifest cannot be written where it belongs (exit code 1)."""


class RefusedToSpendError(KontextError):
    """The run would have to spend credits it was told not to (exit code 3)."""


class FrozenCacheMissError(RefusedToSpendError):
    """``--frozen``: some steps are not in the cache. ``missing`` says which, and why."""

    def __init__(self, missing: Sequence[str]) -> None:
        self.missing = tuple(missing)
        super().__init__(_listing("--frozen: {} not in the cache; no provider was called",
                                  self.missing))


class BudgetExceededError(RefusedToSpendError):
    """``--max-credits``: the cache misses would cost more than allowed."""


class LockMismatchError(RefusedToSpendError):
    """``check``: the recipe, its lock and the exported files disagree; ``differences`` holds
    one line per step or file, saying what changed (exit code 3)."""

    def __init__(self, differences: Sequence[str]) -> None:
        self.differences = tuple(differences)
        n = len(self.differences)
        super().__init__(
            f"{n} difference{'' if n == 1 else 's'} from the lock (run the recipe to bring the "
            f"lock and its files up to date, or undo the change):\n"
            + "\n".join(f"  {printable(line)}" for line in self.differences))


class StepsFailedError(KontextError):
    """Some steps failed; the others finished and are cached (exit code 1)."""

    def __init__(self, failures: Sequence[str]) -> None:
        self.failures = tuple(failures)
        super().__init__(_listing("{} failed", self.failures))


def _listing(headline: str, lines: Sequence[str]) -> str:
    """``headline`` with the count of steps filled in, then one indented line per step (a
    line feed in an API's failure detail shown as an escape, so that it stays one line)."""
    steps = f"{len(lines)} step{'' if len(lines) == 1 else 's'}"
    return headline.format(steps) + ":\n" + "\n".join(f"  {printable(line)}" for line in lines)
