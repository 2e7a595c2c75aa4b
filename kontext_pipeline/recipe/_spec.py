"""Recipes: YAML with positions → JSON Schema → semantic checks → a frozen :class:`Spec`.

This module holds the frozen recipe; reading and validating one (:func:`load_spec`) lives in
:mod:`._loading`, imported when first needed: a plan memo restores a :class:`Spec` without the
YAML reader, the JSON Schema or Jinja.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kontext_pipeline._support.diagnostics import Problem
from kontext_pipeline.recipe._models import DEFAULT_MODEL, MODELS

if TYPE_CHECKING:
    from kontext_pipeline.recipe._matrix import Variant
    from kontext_pipeline.recipe._positions import Position
    from kontext_pipeline.recipe._template import Prompt

__all__ = ["DEFAULT_PARAMS", "InputImage", "Params", "Spec", "Step", "load_spec"]


@dataclass(frozen=True)
class Params:
    """Request parameters of one step for one ``model``, every default explicit. None: not sent
    (``aspect_ratio``, ``width`` and ``height``: the model's own choice), or a field the model
    does not take (:meth:`as_dict` leaves those out)."""

    model: str = DEFAULT_MODEL
    aspect_ratio: str | None = None
    output_format: str = "png"
    safety_tolerance: int = 2
    prompt_upsampling: bool = False
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The fields the model takes, by name: what the cache key holds. For the Kontext models
        these are the four fields keys have always held, so their keys never moved."""
        return {name: getattr(self, name) for name in MODELS[self.model].fields}

    @classmethod
    def of(cls, model: str, written: Mapping[str, Any]) -> Params:
        """The parameters of a request to ``model`` from the request fields ``written`` for a
        step (its own over ``defaults``): those the model takes, its defaults made explicit
        (``steps`` and ``guidance`` of flux-2-flex). A default the model does not take does not
        apply to it; validation refuses a step's own field that its model does not take."""
        info = MODELS[model]
        values = {name: written[name] for name in info.fields if name in written}
        if info.steps is not None:
            values.setdefault("steps", int(info.steps.default))
        if info.guidance is not None:  # 5 and 5.0 are one request: one key
            values["guidance"] = float(values.get("guidance", info.guidance.default))
        return cls(model=model, **values)


DEFAULT_PARAMS = Params()


@dataclass(frozen=True)
class InputImage:
    """A named input image: ``source`` as written in the recipe, ``path`` resolved."""

    name: str
    source: str
    path: Path


@dataclass(frozen=True)
class Step:
    """One step of a recipe. ``image`` holds the names it reads, the default filled in: the
    previous step's id, or nothing for a text-to-image first step. ``prompt`` is the template
    validation compiled (and rendered for every variant).

    ``model`` is the step's model as written (its own, else the recipe's): a model's name, or a
    template naming a matrix key (``"{{ model }}"``); ``models`` holds its model in each variant,
    by variant id. ``request`` holds the request fields written for it (its own over
    ``defaults``); :meth:`params_for` makes them a request to one model."""

    index: int
    id: str
    prompt_source: str
    image: tuple[str, ...]
    seed: int
    seed_explicit: bool
    model: str
    models: Mapping[str, str] = field(hash=False)
    request: Mapping[str, Any] = field(hash=False)
    prompt_position: Position
    prompt: Prompt = field(compare=False, repr=False)

    @property
    def label(self) -> str:
        """How messages name the step: ``steps[2] (id: relight)``."""
        return f"steps[{self.index}] (id: {self.id})"

    def params_for(self, model: str) -> Params:
        """The step's request parameters for ``model`` (one of :attr:`models`' values)."""
        return Params.of(model, self.request)


@dataclass(frozen=True)
class Spec:
    """A valid recipe. ``warnings`` holds what validation found worth saying but not fatal;
    ``model`` is the recipe's model as written (see :attr:`Step.model`)."""

    path: Path
    file: str
    text: str
    name: str
    description: str
    model: str
    seed: int
    variables: Mapping[str, Any]
    inputs: Mapping[str, InputImage]
    matrix_keys: tuple[str, ...]
    variants: tuple[Variant, ...]
    steps: tuple[Step, ...]
    outputs: Mapping[str, str]
    warnings: tuple[Problem, ...] = ()
    env_names: tuple[str, ...] = ()
    """The environment variables the recipe's ``env`` lets its templates see (besides
    ``KONTEXT_VAR_*``)."""

    @property
    def sha256(self) -> str:
        """The sha256 of the recipe file's text."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def lines(self) -> list[str]:
        return self.text.splitlines()

    def step(self, step_id: str) -> Step:
        return next(s for s in self.steps if s.id == step_id)


def load_spec(
    path: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    display: str | None = None,
) -> Spec:
    """Read, validate and freeze the recipe at ``path``.

    ``env`` is the environment (default: empty): templates see as ``env`` only the variables
    the recipe lists in its own ``env`` and those named ``KONTEXT_VAR_*``, and never a name that
    looks like a secret. ``display`` is how messages
    name the file (default: ``path`` as given). Raises :class:`SpecError` with every problem.
    """
    from kontext_pipeline.recipe._loading import load  # noqa: PLC0415  (slow to import)

    return load(path, env=env, display=display)
