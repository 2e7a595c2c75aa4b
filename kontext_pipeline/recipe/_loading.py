"""Reading a recipe: YAML with positions, the JSON Schema, the semantic checks, and the frozen
:class:`~._spec.Spec` they make (see :func:`~._spec.load_spec`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
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
from kontext_pipeline.recipe._models import REQUEST_FIELDS, resolve_model
from kontext_pipeline.recipe._prompts import (
    check_prompts,
    env_names,
    recipe_model,
    recipe_seed,
    step_model_and_seed,
)
from kontext_pipeline.recipe._schema import check_schema
from kontext_pipeline.recipe._spec import InputImage, Spec, Step
from kontext_pipeline.recipe._templating import Prompt, template_environ
from kontext_pipeline.recipe._yamlsource import MAX_SOURCE_BYTES, Document, parse_yaml

__all__ = ["load", "read_source"]


def load(
    path: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    display: str | None = None,
) -> Spec:
    """:func:`~._spec.load_spec`: read, validate and freeze the recipe at ``path``."""
    file = display if display is not None else os.fspath(path)
    recipe = Path(path)
    text = read_source(recipe, file)
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


def read_source(recipe: Path, file: str) -> str:
    """The recipe's text (SpecError if it cannot be read, is too large or is not UTF-8)."""
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
