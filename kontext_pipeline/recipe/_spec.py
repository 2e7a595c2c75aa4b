"""Recipes: YAML with positions → JSON Schema → semantic checks → a frozen :class:`Spec`."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kontext_pipeline._support.diagnostics import Problem
from kontext_pipeline.errors import SpecError
from kontext_pipeline.recipe._checks import (
    check_env,
    check_inputs,
    check_outputs,
    check_params,
    check_steps,
    image_refs,
)
from kontext_pipeline.recipe._findings import Findings
from kontext_pipeline.recipe._matrix import Variant, expand_matrix
from kontext_pipeline.recipe._model_checks import check_models
from kontext_pipeline.recipe._models import DEFAULT_MODEL, MODELS, REQUEST_FIELDS, resolve_model
from kontext_pipeline.recipe._prompts import (
    check_prompts,
    env_names,
    recipe_model,
    recipe_seed,
    step_model_and_seed,
)
from kontext_pipeline.recipe._schema import check_schema
from kontext_pipeline.recipe._templating import Prompt, template_environ
from kontext_pipeline.recipe._yamlsource import MAX_SOURCE_BYTES, Document, Position, parse_yaml

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
    file = display if display is not None else os.fspath(path)
    recipe = Path(path)
    text = _read(recipe, file)
    document, problems = parse_yaml(text, file)
    if document is None:
        raise SpecError(problems)
    findings = Findings(file, document)
    findings.problems.extend(problems)
    check_schema(document.data, findings)
    data = document.data
    variants = _variants(data, findings)
    check_steps(data, findings)
    sizes = check_inputs(data, recipe.parent, findings)
    check_outputs(data, findings)
    check_params(data, findings)
    check_models(data, variants, sizes, findings)
    check_env(data, findings)
    lines = text.splitlines()
    prompts = check_prompts(data, variants, template_environ(env or {}, env_names(data)),
                            findings, lines)
    problems = findings.sorted()
    if findings.has_errors:
        raise SpecError(problems)
    return _freeze(recipe, file=file, text=text, document=document, variants=variants or [],
                   prompts=prompts, warnings=problems)


def _read(recipe: Path, file: str) -> str:
    try:
        with recipe.open("rb") as handle:
            raw = handle.read(MAX_SOURCE_BYTES + 1)  # never more: the file may be endless
            size = os.fstat(handle.fileno()).st_size
    except FileNotFoundError:
        raise SpecError([Problem(file, 0, 0, "no such recipe file")]) from None
    except IsADirectoryError:
        raise SpecError([Problem(file, 0, 0, "is a directory, not a recipe file")]) from None
    except ValueError:  # a NUL character: no system has such a path
        raise SpecError([Problem(file, 0, 0, "the path holds a NUL character, which no file "
                                             "name can contain")]) from None
    except OSError as exc:
        raise SpecError([Problem(file, 0, 0, f"cannot read the recipe: {exc.strerror}")]) from exc
    if len(raw) > MAX_SOURCE_BYTES:
        shown = f"{size}" if size > MAX_SOURCE_BYTES else f"more than {MAX_SOURCE_BYTES}"
        raise SpecError([Problem(file, 1, 1, f"the recipe is {shown} bytes; recipes are limited "
                                             f"to {MAX_SOURCE_BYTES} bytes")])
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SpecError([Problem(file, line, column, "the recipe is not UTF-8 text")]) from None


def _variants(data: Any, findings: Findings) -> list[Variant] | None:
    """The variants, or None while the matrix itself is malformed (the schema says how)."""
    matrix = data.get("matrix")
    if matrix is not None and findings.has_errors_under(("matrix",)):
        return None
    return expand_matrix(matrix, findings)


def _freeze(recipe: Path, *, file: str, text: str, document: Document,
            variants: list[Variant], prompts: Mapping[int, Prompt],
            warnings: list[Problem]) -> Spec:
    data = document.data
    defaults = data.get("defaults", {})
    root = recipe.parent
    inputs = {name: InputImage(name, source, Path(os.path.realpath(root / source)))
              for name, source in data.get("inputs", {}).items()}
    steps: list[Step] = []
    for index, raw in enumerate(data["steps"]):
        request = {**defaults, **{k: raw[k] for k in REQUEST_FIELDS if k in raw}}
        previous = (steps[-1].id,) if steps else ()
        image = tuple(image_refs(raw)) if "image" in raw else previous
        model, seed = step_model_and_seed(data, raw)
        steps.append(Step(
            index=index,
            id=raw["id"],
            prompt_source=raw["prompt"],
            image=image,
            seed=seed,
            seed_explicit="seed" in raw,
            model=model,
            models={v.id: resolve_model(model, v.values) for v in variants},
            request=request,
            prompt_position=document.value_position(("steps", index, "prompt")),
            prompt=prompts[index],
        ))
    last = steps[-1].id
    outputs = data.get("outputs") or {last: last}
    matrix_keys = tuple(dict.fromkeys(k for v in variants for k in v.values))
    return Spec(
        path=recipe,
        file=file,
        text=text,
        name=data["name"],
        description=data.get("description", ""),
        model=recipe_model(data),
        seed=recipe_seed(data),
        variables=dict(data.get("vars", {})),
        inputs=inputs,
        matrix_keys=matrix_keys,
        variants=tuple(variants),
        steps=tuple(steps),
        outputs=dict(outputs),
        warnings=tuple(warnings),
        env_names=env_names(data),
    )
