"""A recipe's prompt template: compiled when it is made (as validation makes each), or on first
use when a plan memo restored the recipe, so that a run the memo serves never imports Jinja."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kontext_pipeline.recipe._sandbox_budget import RecipeBudget
    from kontext_pipeline.recipe._templating import CompiledPrompt, Name

__all__ = ["Prompt"]


class Prompt:
    """A compiled prompt template. It holds no state of a render: one may be shared.
    Making one compiles ``source`` (a :class:`~._templating.RenderError` if it does not)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._compiled: CompiledPrompt | None = _compile(source)

    @classmethod
    def deferred(cls, source: str) -> Prompt:
        """The template of ``source``, compiled when first used: for a source that compiled
        before (a recipe a plan memo holds)."""
        prompt = cls.__new__(cls)
        prompt.source = source
        prompt._compiled = None
        return prompt

    def _template(self) -> CompiledPrompt:
        if self._compiled is None:
            self._compiled = _compile(self.source)
        return self._compiled

    def names(self) -> list[Name]:
        """Top-level names the template reads but does not set itself, in source order."""
        return self._template().names()

    def attributes(self, root: str) -> list[Name]:
        """The ``root.X`` and ``root['X']`` the template reads, as (X, line)."""
        return self._template().attributes(root)

    def render(self, context: Mapping[str, Any], recipe: RecipeBudget | None = None) -> str:
        """Render with ``context``, counting the work against ``recipe`` (the budget shared by
        every render of one recipe; by default one of its own). The result is stripped of
        surrounding whitespace."""
        return self._template().render(context, recipe)


def _compile(source: str) -> CompiledPrompt:
    from kontext_pipeline.recipe._templating import CompiledPrompt  # noqa: PLC0415  (Jinja)

    return CompiledPrompt(source)
